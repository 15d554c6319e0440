//! Integration tests of the SDK (one test binary per crate).

mod props;
