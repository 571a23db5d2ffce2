//! The render/apply stage's errors. Each says which file, which step, and what HAProxy said.

use std::path::PathBuf;

/// Why a template could not be rendered or its output not applied.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    /// The template file could not be read.
    #[error("cannot read template {path}: {source}")]
    ReadTemplate {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The template does not parse, or failed while rendering. `line`/`column` (1-based) point
    /// into the template file when Tera knows them.
    #[error("template {}: {message}", location(path, *line, *column))]
    Template {
        path: PathBuf,
        line: Option<usize>,
        column: Option<usize>,
        message: String,
    },
    /// Writing, syncing or renaming a file failed.
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    /// The check command rejected the rendered config; `output` holds its `[ALERT]` lines.
    #[error("{destination} (rendered) failed `{command}`: {output}")]
    Check {
        destination: PathBuf,
        command: String,
        output: String,
    },
    /// The check command could not be run at all, or ran out of time.
    #[error("cannot run check `{command}`: {reason}")]
    CheckRun { command: String, reason: String },
    /// HAProxy could not be told to reload, or the reload did not take. `rejected`: HAProxy
    /// said the reload failed (its own verdict); otherwise the outcome is unknown (the master
    /// did not answer, or not in time), which may pass on its own.
    #[error("reload ({method}) failed: {reason}")]
    Reload {
        method: &'static str,
        reason: String,
        rejected: bool,
    },
    /// Watching template directories failed.
    #[error("cannot watch {path}: {source}")]
    Watch {
        path: PathBuf,
        source: notify::Error,
    },
}

fn location(path: &std::path::Path, line: Option<usize>, column: Option<usize>) -> String {
    match (line, column) {
        (Some(l), Some(c)) => format!("{}:{l}:{c}", path.display()),
        (Some(l), None) => format!("{}:{l}", path.display()),
        _ => path.display().to_string(),
    }
}

impl RenderError {
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> Self {
        RenderError::Io {
            action,
            path: path.into(),
            source,
        }
    }

    /// Converts a Tera error, keeping the file position Tera reports for syntax and render errors.
    pub(crate) fn from_tera(path: &std::path::Path, err: &tera::Error) -> Self {
        match err.kind() {
            tera::ErrorKind::SyntaxError(report) | tera::ErrorKind::RenderingError(report) => {
                let span = report.span();
                RenderError::Template {
                    path: path.to_path_buf(),
                    line: Some(span.start_line),
                    // Tera's columns are 0-based; editors and compilers count from 1.
                    column: Some(span.start_col + 1),
                    message: report.message().to_string(),
                }
            }
            _ => {
                // Other kinds (a missing include, a filter's error) may wrap a cause: keep it.
                let mut message = err.to_string();
                let mut cause = std::error::Error::source(err);
                while let Some(c) = cause {
                    message.push_str(": ");
                    message.push_str(&c.to_string());
                    cause = c.source();
                }
                RenderError::Template {
                    path: path.to_path_buf(),
                    line: None,
                    column: None,
                    message,
                }
            }
        }
    }
}
