//! Integration tests of the edge agent over real sockets (one test binary per crate).

mod exchange;
mod sdk_device;
mod support;
