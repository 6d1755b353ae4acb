//! The callback domain: query parsing, Sign check, body parsing and normalization into the v1 event (pure, no I/O).

mod body;
mod category;
mod error;
mod event;
mod query;
mod sign;

pub use body::MAX_BODY_DEPTH;
pub use category::{error_code_label, ErrorCategory, CUSTOM_REFUSAL_LABEL, ERROR_CODE_LABELS, OTHER_CODE_LABEL};
pub use error::{BodyError, RejectError};
pub use event::{classify, event_id, Classified, ExceptionEvent, EXCEPTION_COMMAND, SCHEMA_V1};
pub use query::{AuthenticatedQuery, RawQuery};
pub use sign::{sign, AppRegistry};
