//! Prometheus text exposition, parsed into `name{labels}` -> value.

use std::collections::BTreeMap;
use std::time::Duration;

/// One scrape of /metrics: keys are `name` or `name{label="v",...}` exactly as printed.
#[derive(Clone, Debug, Default)]
pub struct Metrics {
    pub values: BTreeMap<String, f64>,
    pub text: String,
}

impl Metrics {
    /// Parses Prometheus text format (comments skipped, optional timestamp ignored).
    pub fn parse(text: &str) -> Metrics {
        let mut values = BTreeMap::new();
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (key, rest) = match line.rfind('}') {
                Some(i) => (&line[..=i], line[i + 1..].trim()),
                None => match line.split_once(char::is_whitespace) {
                    Some((k, r)) => (k, r.trim()),
                    None => continue,
                },
            };
            let value_text = rest.split_whitespace().next().unwrap_or("");
            let value = match value_text {
                "+Inf" => f64::INFINITY,
                "-Inf" => f64::NEG_INFINITY,
                v => match v.parse::<f64>() {
                    Ok(v) => v,
                    Err(_) => continue,
                },
            };
            values.insert(key.to_string(), value);
        }
        Metrics { values, text: text.to_string() }
    }

    /// The value of `key`, if printed.
    pub fn get(&self, key: &str) -> Option<f64> {
        self.values.get(key).copied()
    }

    /// Every key whose metric name is `name` (with or without labels).
    pub fn series(&self, name: &str) -> Vec<(&str, f64)> {
        self.values
            .iter()
            .filter(|(k, _)| k.as_str() == name || k.starts_with(&format!("{name}{{")))
            .map(|(k, v)| (k.as_str(), *v))
            .collect()
    }
}

/// GET /metrics on the admin listener, parsed.
pub fn scrape(admin_addr: &str) -> Metrics {
    let reply = super::http::get(&format!("http://{admin_addr}/metrics"));
    assert_eq!(reply.status, 200, "GET /metrics: {}", String::from_utf8_lossy(&reply.body));
    Metrics::parse(&String::from_utf8_lossy(&reply.body))
}

/// GET /metrics, parsed; `None` while the instance is starting (503 until its spool is recovered).
pub fn try_scrape(admin_addr: &str) -> Option<Metrics> {
    let reply = super::http::try_get(&format!("http://{admin_addr}/metrics")).ok()?;
    (reply.status == 200).then(|| Metrics::parse(&String::from_utf8_lossy(&reply.body)))
}

/// Scrapes until `key` satisfies `pred` (or `timeout`); returns the last scrape either way.
pub fn scrape_until(admin_addr: &str, key: &str, timeout: Duration, pred: impl Fn(f64) -> bool) -> Metrics {
    let mut last = Metrics::default();
    let ok = super::poll_until(timeout, Duration::from_millis(100), || {
        last = try_scrape(admin_addr)?;
        last.get(key).filter(|v| pred(*v)).map(|_| ())
    });
    if ok.is_none() {
        last = scrape(admin_addr);
    }
    last
}
