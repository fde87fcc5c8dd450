use std::path::PathBuf;

/// Why a config file was refused. Each message starts with `file:line:col`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{}: cannot read config: {source}", path.display())]
    Read {
        /// The config file.
        path: PathBuf,
        /// Why it could not be read.
        source: std::io::Error,
    },
    /// Not valid TOML, or a key or value of the wrong type or name.
    #[error("{}:{line}:{column}: {message}", path.display())]
    Syntax {
        /// The config file.
        path: PathBuf,
        /// 1-based line of the problem.
        line: usize,
        /// 1-based column of the problem.
        column: usize,
        /// What is wrong there.
        message: String,
    },
    /// Well-formed, but a value is not allowed (a duplicate name, a limit
    /// out of range, a missing file).
    #[error("{}:{line}:{column}: {message}", path.display())]
    Invalid {
        /// The config file.
        path: PathBuf,
        /// 1-based line of the offending value.
        line: usize,
        /// 1-based column of the offending value.
        column: usize,
        /// What is wrong with it.
        message: String,
    },
}
