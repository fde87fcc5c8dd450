//! Development aids shared by `ferrule demo` and the tests. Nothing here is
//! used by `ferrule run`.

pub mod certs;
pub mod config;
pub mod net;
