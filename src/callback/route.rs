//! Routing of callback commands to topics (`--route COMMAND=TOPIC`) and the pure decision of what to do with a callback.

use std::fmt;
use std::str::FromStr;

use super::command::is_before_callback;
use super::error::RouteRefusal;
use super::event::EXCEPTION_COMMAND;

/// Kafka's limit on topic name length.
const MAX_TOPIC_LEN: usize = 249;

/// Why a `--route` value or a set of them is unusable; every variant names the offending route as given.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// No `=` between COMMAND and TOPIC.
    #[error("route {0:?}: expected COMMAND=TOPIC")]
    MissingSeparator(Box<str>),
    /// COMMAND is empty or holds a character other than letters, digits, `.`, `_`, `-` and `*`.
    #[error(
        "route {0:?}: COMMAND must be a callback command name or a pattern of letters, digits, '.', '_', '-' and '*'"
    )]
    InvalidCommand(Box<str>),
    /// TOPIC is not a legal Kafka topic name.
    #[error("route {0:?}: TOPIC must be 1 to 249 letters, digits, '.', '_' or '-', and not '.' or '..'")]
    InvalidTopic(Box<str>),
    /// COMMAND names the exception callback, whose route is built in.
    #[error(
        "route {0:?}: {EXCEPTION_COMMAND} always goes to the main topic (--topic) with schema v1 and cannot be routed"
    )]
    ExceptionCommand(Box<str>),
    /// The same COMMAND is routed to two different topics.
    #[error("route {route:?} conflicts with route {earlier:?}: a COMMAND goes to one topic")]
    Conflict {
        /// The later route.
        route: Box<str>,
        /// The route given first for the same COMMAND.
        earlier: Box<str>,
    },
}

/// One `COMMAND=TOPIC` route. COMMAND is an exact, case-sensitive command name, or a pattern in which each `*`
/// stands for any run of characters (`Group.*`, `*.CallbackAfterSendMsg`, `*`); runs of `*` count as one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    command: Box<str>,
    topic: Box<str>,
    /// Length of the literal text before the first `*` (the whole command for exact routes).
    prefix_len: usize,
    /// Number of literal (non-`*`) characters.
    literal_len: usize,
}

impl Route {
    /// A route from its two halves; refuses the exception command and names that are not command names or
    /// Kafka topic names.
    pub fn new(command: &str, topic: &str) -> Result<Self, RouteError> {
        let as_given = || format!("{command}={topic}").into_boxed_str();
        let valid_command = !command.is_empty()
            && command.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'*'));
        if !valid_command {
            return Err(RouteError::InvalidCommand(as_given()));
        }
        if command == EXCEPTION_COMMAND {
            return Err(RouteError::ExceptionCommand(as_given()));
        }
        let valid_topic = !topic.is_empty()
            && topic.len() <= MAX_TOPIC_LEN
            && topic != "."
            && topic != ".."
            && topic.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if !valid_topic {
            return Err(RouteError::InvalidTopic(as_given()));
        }
        let mut collapsed = String::with_capacity(command.len());
        for c in command.chars() {
            if !(c == '*' && collapsed.ends_with('*')) {
                collapsed.push(c);
            }
        }
        Ok(Route {
            prefix_len: collapsed.find('*').unwrap_or(collapsed.len()),
            literal_len: collapsed.bytes().filter(|&b| b != b'*').count(),
            command: collapsed.into_boxed_str(),
            topic: topic.into(),
        })
    }

    /// COMMAND, with runs of `*` collapsed to one.
    pub fn command(&self) -> &str {
        &self.command
    }

    /// TOPIC.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Whether COMMAND holds a `*`.
    pub fn is_pattern(&self) -> bool {
        self.prefix_len < self.command.len()
    }

    /// Whether `command` is the route's COMMAND or matches its pattern.
    pub fn matches(&self, command: &str) -> bool {
        if self.is_pattern() {
            glob_matches(self.command.as_bytes(), command.as_bytes())
        } else {
            *self.command == *command
        }
    }
}

impl FromStr for Route {
    type Err = RouteError;

    /// Parses `COMMAND=TOPIC`, split at the first `=`.
    fn from_str(spec: &str) -> Result<Self, RouteError> {
        let (command, topic) = spec.split_once('=').ok_or_else(|| RouteError::MissingSeparator(spec.into()))?;
        Route::new(command, topic)
    }
}

impl fmt::Display for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}", self.command, self.topic)
    }
}

/// Whether `text` matches `pattern`, where `*` matches any run of bytes. Patterns are ASCII, so matching
/// bytes never splits a character wrongly. Iterative with one backtrack point: O(len(pattern) × len(text)).
fn glob_matches(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    // Backtracking only to the last `*` suffices: an earlier `*` can absorb whatever a later one could.
    // Holds the pattern index after that `*` and the text index it has absorbed up to.
    let mut resume: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some(b'*') => {
                p += 1;
                resume = Some((p, t));
            }
            Some(&b) if b == text[t] => {
                p += 1;
                t += 1;
            }
            _ => match resume {
                Some((after_star, absorbed)) => {
                    p = after_star;
                    t = absorbed + 1;
                    resume = Some((after_star, t));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&b| b == b'*')
}

/// The configured routes. The exception command is never looked up here: its route to the main topic with
/// schema v1 is built in, a route naming it is a configuration error ([`RouteError::ExceptionCommand`]), and
/// patterns that match it (`Group.*`, `*`) do not apply to it.
///
/// Precedence: an exact route beats every pattern; among patterns the longer literal prefix (the text before
/// the first `*`) wins, then the one with more literal characters, then the one given first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouteTable {
    /// Sorted by command: an exact match is a binary search, whatever the number of routes.
    exact: Vec<Route>,
    /// In precedence order, so the first match is the most specific.
    patterns: Vec<Route>,
}

impl RouteTable {
    /// Builds the table. The same route given twice counts once; the same COMMAND with two topics is refused.
    pub fn new(routes: impl IntoIterator<Item = Route>) -> Result<Self, RouteError> {
        let mut table = RouteTable::default();
        for route in routes {
            let list = if route.is_pattern() { &mut table.patterns } else { &mut table.exact };
            match list.iter().find(|r| r.command == route.command) {
                Some(earlier) if earlier.topic == route.topic => {}
                Some(earlier) => {
                    return Err(RouteError::Conflict {
                        route: route.to_string().into(),
                        earlier: earlier.to_string().into(),
                    })
                }
                None => list.push(route),
            }
        }
        table.exact.sort_unstable_by(|a, b| a.command.cmp(&b.command));
        // Stable: equally specific patterns keep the order they were given in.
        table.patterns.sort_by_key(|r| (std::cmp::Reverse(r.prefix_len), std::cmp::Reverse(r.literal_len)));
        Ok(table)
    }

    /// Parses `--route` values (`COMMAND=TOPIC` each) and builds the table; the error names the bad route.
    pub fn parse<I>(specs: I) -> Result<Self, RouteError>
    where
        I: IntoIterator,
        I::Item: AsRef<str>,
    {
        let routes = specs.into_iter().map(|spec| spec.as_ref().parse()).collect::<Result<Vec<Route>, _>>()?;
        Self::new(routes)
    }

    /// The most specific route for `command`; always `None` for the exception command.
    pub fn lookup(&self, command: &str) -> Option<&Route> {
        if command == EXCEPTION_COMMAND {
            return None;
        }
        if let Ok(i) = self.exact.binary_search_by(|r| (*r.command).cmp(command)) {
            return Some(&self.exact[i]);
        }
        self.patterns.iter().find(|r| r.matches(command))
    }

    /// The routes: exact ones by command, then patterns in precedence order.
    pub fn routes(&self) -> impl Iterator<Item = &Route> + '_ {
        self.exact.iter().chain(&self.patterns)
    }

    /// Every topic some route publishes to, sorted and without repeats (e.g. to check they exist).
    pub fn topics(&self) -> Vec<&str> {
        let mut topics: Vec<&str> = self.routes().map(Route::topic).collect();
        topics.sort_unstable();
        topics.dedup();
        topics
    }

    /// Whether no route is configured.
    pub fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.patterns.is_empty()
    }
}

/// What to answer for an authentic callback of a command no route matches (`--unrouted`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum UnroutedPolicy {
    /// Answer OK and publish nothing (the default).
    #[default]
    Ack,
    /// Refuse with [`RouteRefusal::Unrouted`], so Tencent's console counts the callback as failed.
    Reject,
}

impl UnroutedPolicy {
    /// The flag value: `ack` or `reject`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ack => "ack",
            Self::Reject => "reject",
        }
    }
}

impl FromStr for UnroutedPolicy {
    type Err = String;

    /// `ack` or `reject`, exactly.
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "ack" => Ok(Self::Ack),
            "reject" => Ok(Self::Reject),
            other => Err(format!("{other:?} is neither ack nor reject")),
        }
    }
}

impl fmt::Display for UnroutedPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The answering policy of the endpoint (`--unrouted`, `--refuse-before-callbacks`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RoutingPolicy {
    /// What unrouted commands other than before-callbacks get.
    pub unrouted: UnroutedPolicy,
    /// Refuse every before-callback, routed or not, instead of allowing it. `unrouted` never applies to
    /// before-callbacks: whether users' actions go ahead is decided by this flag alone.
    pub refuse_before_callbacks: bool,
}

/// What the edge does with an authentic, well-formed callback: publish (where), then answer (how).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition<'r> {
    /// The exception callback: publish the v1 event to the main topic (`--topic`), answer OK.
    Exception,
    /// Publish the `tencent.im.callback/v1` envelope to `topic`, then answer OK, or refuse with `refusal`.
    Publish {
        /// The matching route's topic.
        topic: &'r str,
        /// `Some` for a before-callback under `--refuse-before-callbacks`.
        refusal: Option<RouteRefusal>,
    },
    /// Publish nothing; answer OK, or refuse with `refusal`.
    Skip {
        /// `Some` for a before-callback under `--refuse-before-callbacks`, or any other command under
        /// `--unrouted reject`.
        refusal: Option<RouteRefusal>,
    },
}

impl Disposition<'_> {
    /// Every value `outcome_label` can return (for pre-initialising `imcf_callbacks_total`).
    pub const OUTCOME_LABELS: [&'static str; 5] = ["accepted", "routed", "ignored", "before_refused", "unrouted"];

    /// The refusal to answer with, if the answer is not OK.
    pub fn refusal(&self) -> Option<RouteRefusal> {
        match *self {
            Self::Exception => None,
            Self::Publish { refusal, .. } | Self::Skip { refusal } => refusal,
        }
    }

    /// Bounded `outcome` label: `accepted` (exception published), `routed` (envelope published, OK),
    /// `ignored` (nothing published, OK), else the refusal's label (`before_refused`, `unrouted`).
    pub fn outcome_label(&self) -> &'static str {
        match (self, self.refusal()) {
            (_, Some(refusal)) => refusal.outcome_label(),
            (Self::Exception, None) => "accepted",
            (Self::Publish { .. }, None) => "routed",
            (Self::Skip { .. }, None) => "ignored",
        }
    }
}

/// Decides what to do with an authentic callback of `command` (from [`Classified::command`] or
/// [`Normalized::command`]): the exception command always goes to the main topic; a routed command is
/// published to its route's topic; before-callbacks are allowed unless `refuse_before_callbacks`; other
/// unrouted commands are acknowledged or rejected per `policy.unrouted`.
///
/// [`Classified::command`]: super::Classified::command
/// [`Normalized::command`]: super::Normalized::command
pub fn route<'r>(routes: &'r RouteTable, command: &str, policy: RoutingPolicy) -> Disposition<'r> {
    if command == EXCEPTION_COMMAND {
        return Disposition::Exception;
    }
    let before = is_before_callback(command);
    let refusal = if before && policy.refuse_before_callbacks { Some(RouteRefusal::BeforeCallback) } else { None };
    match routes.lookup(command) {
        Some(route) => Disposition::Publish { topic: route.topic(), refusal },
        None if before => Disposition::Skip { refusal },
        None => {
            Disposition::Skip { refusal: (policy.unrouted == UnroutedPolicy::Reject).then_some(RouteRefusal::Unrouted) }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(specs: &[&str]) -> RouteTable {
        RouteTable::parse(specs).unwrap()
    }

    fn topic_of<'t>(table: &'t RouteTable, command: &str) -> Option<&'t str> {
        table.lookup(command).map(Route::topic)
    }

    #[test]
    fn parses_exact_and_pattern_routes() {
        let r: Route = "Group.CallbackAfterSendMsg=im.group.after-send".parse().unwrap();
        assert_eq!(
            (r.command(), r.topic(), r.is_pattern()),
            ("Group.CallbackAfterSendMsg", "im.group.after-send", false)
        );
        assert_eq!(r.to_string(), "Group.CallbackAfterSendMsg=im.group.after-send");
        let r: Route = "Group.**=t".parse().unwrap();
        assert_eq!((r.command(), r.is_pattern()), ("Group.*", true));
        assert!("*=all_callbacks".parse::<Route>().unwrap().is_pattern());
    }

    #[test]
    fn parse_errors_name_the_route() {
        let cases = [
            ("Group.CallbackAfterSendMsg", RouteError::MissingSeparator("Group.CallbackAfterSendMsg".into())),
            ("=t", RouteError::InvalidCommand("=t".into())),
            ("Group.* =t", RouteError::InvalidCommand("Group.* =t".into())),
            ("Gr/oup=t", RouteError::InvalidCommand("Gr/oup=t".into())),
            ("Group.*=", RouteError::InvalidTopic("Group.*=".into())),
            ("Group.*=a=b", RouteError::InvalidTopic("Group.*=a=b".into())),
            ("Group.*=..", RouteError::InvalidTopic("Group.*=..".into())),
            ("Group.*=.", RouteError::InvalidTopic("Group.*=.".into())),
            ("Group.*=tö", RouteError::InvalidTopic("Group.*=tö".into())),
            (
                "Group.CallbackSendMsgException=t",
                RouteError::ExceptionCommand("Group.CallbackSendMsgException=t".into()),
            ),
        ];
        for (spec, expected) in cases {
            let err = spec.parse::<Route>().unwrap_err();
            assert_eq!(err, expected, "{spec}");
            assert!(err.to_string().starts_with(&format!("route {spec:?}: ")), "{err}");
        }
        assert!(format!("Group.*={}", "t".repeat(249)).parse::<Route>().is_ok());
        assert!(format!("Group.*={}", "t".repeat(250)).parse::<Route>().is_err());
        assert_eq!(
            RouteError::ExceptionCommand("Group.CallbackSendMsgException=t".into()).to_string(),
            "route \"Group.CallbackSendMsgException=t\": Group.CallbackSendMsgException always goes to the main \
             topic (--topic) with schema v1 and cannot be routed"
        );
        // A pattern that happens to match the exception command is fine; it just never applies to it.
        assert!("Group.CallbackSendMsgException*=t".parse::<Route>().is_ok());
        assert!(RouteTable::parse(["Group.*=t", "nonsense"]).is_err());
    }

    #[test]
    fn duplicates_count_once_and_conflicts_are_refused() {
        let t = table(&["Group.*=a", "Group.*=a", "Group.CallbackAfterSendMsg=b", "Group.CallbackAfterSendMsg=b"]);
        assert_eq!(t.routes().count(), 2);
        let err = RouteTable::parse(["Group.*=a", "State.StateChange=s", "Group.**=b"]).unwrap_err();
        assert_eq!(err, RouteError::Conflict { route: "Group.*=b".into(), earlier: "Group.*=a".into() });
        assert_eq!(
            err.to_string(),
            "route \"Group.*=b\" conflicts with route \"Group.*=a\": a COMMAND goes to one topic"
        );
        assert!(RouteTable::parse(["X.Y=a", "X.Y=b"]).is_err());
    }

    #[test]
    fn most_specific_route_wins() {
        let t = table(&[
            "*=all",
            "Group.*=group",
            "Group.CallbackAfter*=group-after",
            "Group.CallbackAfterSendMsg=group-after-send",
            "*SendMsg=any-send",
            "Group.*Msg=group-msg",
        ]);
        assert_eq!(topic_of(&t, "Group.CallbackAfterSendMsg"), Some("group-after-send"));
        assert_eq!(topic_of(&t, "Group.CallbackAfterRecallMsg"), Some("group-after"));
        // Same prefix "Group.": more literal characters wins.
        assert_eq!(topic_of(&t, "Group.CallbackBeforeSendMsg"), Some("group-msg"));
        assert_eq!(topic_of(&t, "Group.CallbackBeforeCreateGroup"), Some("group"));
        assert_eq!(topic_of(&t, "C2C.CallbackAfterSendMsg"), Some("any-send"));
        assert_eq!(topic_of(&t, "State.StateChange"), Some("all"));
        assert_eq!(topic_of(&t, ""), Some("all"));
        // Same (empty) prefix: more literal characters wins, whatever the order.
        for specs in [
            ["*.CallbackAfterSendMsg=more", "*.CallbackAfterSendMs*=fewer"],
            ["*.CallbackAfterSendMs*=fewer", "*.CallbackAfterSendMsg=more"],
        ] {
            assert_eq!(topic_of(&table(&specs), "C2C.CallbackAfterSendMsg"), Some("more"));
        }
        // Equally specific patterns: the first given wins.
        let t = table(&["*Msg=first", "*Sen*=second"]);
        assert_eq!(topic_of(&t, "C2C.CallbackAfterSendMsg"), Some("first"));
        let t = table(&["*Sen*=second", "*Msg=first"]);
        assert_eq!(topic_of(&t, "C2C.CallbackAfterSendMsg"), Some("second"));
    }

    #[test]
    fn exception_command_is_never_looked_up() {
        let t = table(&["*=all", "Group.*=group", "Group.CallbackSendMsgException*=x"]);
        assert_eq!(topic_of(&t, EXCEPTION_COMMAND), None);
        assert_eq!(topic_of(&t, "Group.CallbackSendMsgExceptionV2"), Some("x"));
    }

    #[test]
    fn matching_is_exact_and_case_sensitive() {
        let t = table(&["Group.CallbackAfterSendMsg=a", "C2C.*=c"]);
        assert_eq!(topic_of(&t, "group.callbackaftersendmsg"), None);
        assert_eq!(topic_of(&t, "Group.CallbackAfterSendMsg "), None);
        assert_eq!(topic_of(&t, "Group.CallbackAfterSendMs"), None);
        assert_eq!(topic_of(&t, "c2c.CallbackAfterSendMsg"), None);
        assert_eq!(topic_of(&t, "C2C."), Some("c"));
        assert_eq!(topic_of(&t, "C2C.é"), Some("c"));
    }

    #[test]
    fn glob_matching() {
        for (pattern, text, expected) in [
            ("*", "", true),
            ("*", "anything", true),
            ("a*", "a", true),
            ("a*b", "ab", true),
            ("a*b", "axxb", true),
            ("a*b", "axxbx", false),
            ("a*b*c", "abbbcbc", true),
            ("a*b*c", "acb", false),
            ("*a*", "bab", true),
            ("*ab", "aab", true),
            ("a**b", "ab", true),
            ("ab", "a", false),
            ("", "", true),
            ("", "a", false),
        ] {
            assert_eq!(glob_matches(pattern.as_bytes(), text.as_bytes()), expected, "{pattern} ~ {text}");
        }
        // Pathological input stays fast (quadratic at worst, and names are short).
        let text = "a".repeat(10_000);
        assert!(!glob_matches(b"*a*a*a*a*b", text.as_bytes()));
    }

    #[test]
    fn topics_are_sorted_and_distinct() {
        let t = table(&["B.x=t2", "A.*=t1", "C.*=t2", "*=t0"]);
        assert_eq!(t.topics(), ["t0", "t1", "t2"]);
        assert!(!t.is_empty());
        assert!(RouteTable::default().is_empty());
        assert!(RouteTable::parse(Vec::<String>::new()).unwrap().is_empty());
        let order: Vec<String> = t.routes().map(Route::to_string).collect();
        assert_eq!(order, ["B.x=t2", "A.*=t1", "C.*=t2", "*=t0"]);
    }

    #[test]
    fn unrouted_policy_parses_ack_or_reject() {
        assert_eq!("ack".parse(), Ok(UnroutedPolicy::Ack));
        assert_eq!("reject".parse(), Ok(UnroutedPolicy::Reject));
        assert!("Ack".parse::<UnroutedPolicy>().is_err());
        assert_eq!(UnroutedPolicy::default(), UnroutedPolicy::Ack);
        assert_eq!(UnroutedPolicy::Reject.to_string(), "reject");
        assert_eq!(
            RoutingPolicy::default(),
            RoutingPolicy { unrouted: UnroutedPolicy::Ack, refuse_before_callbacks: false }
        );
    }

    const ACK: RoutingPolicy = RoutingPolicy { unrouted: UnroutedPolicy::Ack, refuse_before_callbacks: false };
    const REJECT: RoutingPolicy = RoutingPolicy { unrouted: UnroutedPolicy::Reject, refuse_before_callbacks: false };
    const REFUSE: RoutingPolicy = RoutingPolicy { unrouted: UnroutedPolicy::Ack, refuse_before_callbacks: true };
    const STRICT: RoutingPolicy = RoutingPolicy { unrouted: UnroutedPolicy::Reject, refuse_before_callbacks: true };

    #[test]
    fn exception_is_always_published_to_the_main_topic() {
        for t in [table(&[]), table(&["*=all"])] {
            for policy in [ACK, REJECT, REFUSE, STRICT] {
                let d = route(&t, EXCEPTION_COMMAND, policy);
                assert_eq!(d, Disposition::Exception);
                assert_eq!((d.refusal(), d.outcome_label()), (None, "accepted"));
            }
        }
    }

    #[test]
    fn routed_commands_are_published_and_acknowledged() {
        let t = table(&["Group.*=group"]);
        for policy in [ACK, REJECT, REFUSE, STRICT] {
            let d = route(&t, "Group.CallbackAfterSendMsg", policy);
            assert_eq!(d, Disposition::Publish { topic: "group", refusal: None }, "{policy:?}");
            assert_eq!(d.outcome_label(), "routed");
        }
    }

    #[test]
    fn routed_before_callbacks_are_allowed_unless_refused() {
        let t = table(&["Group.*=group"]);
        for policy in [ACK, REJECT] {
            let d = route(&t, "Group.CallbackBeforeSendMsg", policy);
            assert_eq!(d, Disposition::Publish { topic: "group", refusal: None });
            assert_eq!(d.outcome_label(), "routed");
        }
        for policy in [REFUSE, STRICT] {
            let d = route(&t, "Group.CallbackBeforeSendMsg", policy);
            assert_eq!(d, Disposition::Publish { topic: "group", refusal: Some(RouteRefusal::BeforeCallback) });
            assert_eq!(d.outcome_label(), "before_refused");
        }
    }

    #[test]
    fn unrouted_before_callbacks_ignore_the_unrouted_policy() {
        let t = table(&["Group.*=group"]);
        for policy in [ACK, REJECT] {
            let d = route(&t, "Sns.CallbackPrevFriendAdd", policy);
            assert_eq!(d, Disposition::Skip { refusal: None }, "{policy:?}");
            assert_eq!(d.outcome_label(), "ignored");
        }
        for policy in [REFUSE, STRICT] {
            let d = route(&t, "C2C.CallbackBeforeSendMsg", policy);
            assert_eq!(d, Disposition::Skip { refusal: Some(RouteRefusal::BeforeCallback) }, "{policy:?}");
            assert_eq!(d.outcome_label(), "before_refused");
        }
    }

    #[test]
    fn unrouted_commands_are_acknowledged_or_rejected() {
        let t = table(&["Group.*=group"]);
        for policy in [ACK, REFUSE] {
            let d = route(&t, "State.StateChange", policy);
            assert_eq!(d, Disposition::Skip { refusal: None });
            assert_eq!(d.outcome_label(), "ignored");
        }
        for policy in [REJECT, STRICT] {
            let d = route(&t, "State.StateChange", policy);
            assert_eq!(d, Disposition::Skip { refusal: Some(RouteRefusal::Unrouted) });
            assert_eq!(d.outcome_label(), "unrouted");
        }
    }

    #[test]
    fn outcome_labels_are_all_listed() {
        let t = table(&["Group.*=group"]);
        let mut seen: Vec<&str> = Vec::new();
        for command in
            [EXCEPTION_COMMAND, "Group.CallbackAfterSendMsg", "Group.CallbackBeforeSendMsg", "X.Y", "X.Before"]
        {
            for policy in [ACK, REJECT, REFUSE, STRICT] {
                seen.push(route(&t, command, policy).outcome_label());
            }
        }
        seen.sort_unstable();
        seen.dedup();
        let mut all = Disposition::OUTCOME_LABELS.to_vec();
        all.sort_unstable();
        assert_eq!(seen, all);
    }
}
