//! Property tests of the callback domain.
