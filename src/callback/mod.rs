//! The callback domain: query parsing, Sign check, body parsing, normalization into events, and routing (pure, no I/O).

mod body;
mod category;
mod command;
mod envelope;
mod error;
mod event;
mod json;
#[cfg(test)]
mod proptests;
mod query;
mod route;
mod sign;
#[cfg(test)]
mod test_support;

pub use body::MAX_BODY_DEPTH;
pub use category::{error_code_label, ErrorCategory, CUSTOM_REFUSAL_LABEL, ERROR_CODE_LABELS, OTHER_CODE_LABEL};
pub use command::{command_label, is_before_callback, COMMAND_LABELS, OFFICIAL_ACCOUNT_LABEL, OTHER_COMMAND_LABEL};
pub use envelope::{normalize, CallbackEnvelope, Normalized, SCHEMA_CALLBACK_V1};
pub use error::{BodyError, RejectError, RouteRefusal};
pub use event::{classify, event_id, Classified, ExceptionEvent, EXCEPTION_COMMAND, SCHEMA_V1};
pub use query::{without_sign, AuthenticatedQuery, RawQuery};
pub use route::{route, Disposition, Route, RouteError, RouteTable, RoutingPolicy, UnroutedPolicy};
pub use sign::{sign, AppRegistry};
