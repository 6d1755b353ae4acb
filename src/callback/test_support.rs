//! Shared fixtures of the module's unit tests: an app registry without a token and a fixed arrival time.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::query::{AuthenticatedQuery, RawQuery};
use super::sign::AppRegistry;

/// `raw` authenticated for app 1400000000, which has no token.
pub fn query(raw: &str) -> AuthenticatedQuery<'_> {
    AppRegistry::new([(1_400_000_000, vec![])], Duration::from_secs(60))
        .authenticate(RawQuery::parse(raw).unwrap(), 0)
        .unwrap()
}

/// The arrival time every fixture's expected event uses.
pub fn received() -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(1_670_574_415_007)
}
