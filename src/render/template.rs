//! Loading and rendering one Tera template, and the filters bender adds for HAProxy configs.

use std::path::{Path, PathBuf};

use tera::{Kwargs, State, Tera, TeraResult};

use super::context::RenderContext;
use super::error::RenderError;

/// A parsed template, ready to render any number of contexts.
pub(crate) struct Compiled {
    tera: Tera,
    /// The template's name inside Tera: its path, so that Tera's errors name the file.
    name: String,
    path: PathBuf,
}

impl std::fmt::Debug for Compiled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Compiled")
            .field("path", &self.path)
            .finish()
    }
}

/// Reads and parses the template at `path`.
pub(crate) fn load(path: &Path) -> Result<Compiled, RenderError> {
    let text = std::fs::read_to_string(path).map_err(|source| RenderError::ReadTemplate {
        path: path.to_path_buf(),
        source,
    })?;
    compile(path, &text)
}

/// Parses template text; `path` names it in errors.
pub(crate) fn compile(path: &Path, text: &str) -> Result<Compiled, RenderError> {
    let name = path.display().to_string();
    let mut tera = Tera::new();
    // HAProxy configs are not HTML: never entity-escape what a template prints.
    tera.autoescape_on(Vec::<&'static str>::new());
    tera.register_filter("haproxy_quote", haproxy_quote_filter);
    tera.add_raw_template(&name, text)
        .map_err(|e| RenderError::from_tera(path, &e))?;
    Ok(Compiled {
        tera,
        name,
        path: path.to_path_buf(),
    })
}

impl Compiled {
    pub(crate) fn render(&self, ctx: &RenderContext) -> Result<String, RenderError> {
        let context = tera::Context::from_serialize(ctx)
            .map_err(|e| RenderError::from_tera(&self.path, &e))?;
        self.tera
            .render(&self.name, &context)
            .map_err(|e| RenderError::from_tera(&self.path, &e))
    }
}

/// Quotes `value` as one HAProxy config argument: a double-quoted string in which `\`, `"` and
/// `$` (which would start an environment variable) are escaped. With `logformat`, `%` is doubled
/// too, for arguments HAProxy reads as log-format strings (`http-request set-header` and the
/// like), where `%[...]` would otherwise run a sample fetch.
///
/// Control characters are refused: inside a config argument they can only do harm (a newline
/// in a header value, say), and refusing keeps the last good config serving.
pub fn haproxy_quote(value: &str, logformat: bool) -> Result<String, String> {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '$' => out.push_str("\\$"),
            '%' if logformat => out.push_str("%%"),
            c if c.is_control() => {
                return Err(format!(
                    "haproxy_quote: {value:?} holds the control character {c:?}, which cannot be quoted safely"
                ));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    Ok(out)
}

fn haproxy_quote_filter(value: &str, kwargs: Kwargs, _: &State) -> TeraResult<String> {
    let logformat = kwargs.get::<bool>("logformat")?.unwrap_or(false);
    haproxy_quote(value, logformat).map_err(tera::Error::message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_escapes_what_haproxy_interprets() {
        assert_eq!(haproxy_quote("plain", false).unwrap(), "\"plain\"");
        assert_eq!(
            haproxy_quote(r#"a "b" \c $HOME #x"#, false).unwrap(),
            r#""a \"b\" \\c \$HOME #x""#
        );
        assert_eq!(haproxy_quote("%[src]", false).unwrap(), "\"%[src]\"");
        assert_eq!(haproxy_quote("%[src]", true).unwrap(), "\"%%[src]\"");
        assert!(haproxy_quote("a\nb", false).is_err());
        assert!(haproxy_quote("a\rb", false).is_err());
    }

    #[test]
    fn quoting_filter_in_a_template() {
        let c = compile(
            Path::new("t.tera"),
            "x {{ vars.v | haproxy_quote }} {{ vars.v | haproxy_quote(logformat=true) }}",
        )
        .unwrap();
        let mut ctx = super::super::context::build("n", &Default::default(), &Default::default());
        ctx.vars.insert("v".into(), "50% \"off\"".into());
        assert_eq!(c.render(&ctx).unwrap(), r#"x "50% \"off\"" "50%% \"off\"""#);
        ctx.vars.insert("v".into(), "a\nb".into());
        let err = c.render(&ctx).unwrap_err().to_string();
        assert!(err.contains("control character"), "{err}");
    }

    #[test]
    fn syntax_errors_carry_file_line_and_column() {
        let err = compile(
            Path::new("/etc/bender/haproxy.cfg.tera"),
            "global\n    maxconn 10\n{% for b in backends %}\nbackend {{ b.name }\n",
        )
        .unwrap_err();
        match &err {
            RenderError::Template { line, column, .. } => {
                assert_eq!(*line, Some(4), "{err}");
                assert!(column.is_some(), "{err}");
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(
            err.to_string().contains("/etc/bender/haproxy.cfg.tera:4:"),
            "{err}"
        );
    }

    #[test]
    fn render_errors_carry_the_line() {
        let c = compile(Path::new("t.tera"), "ok\n{{ nosuch.field }}\n").unwrap();
        let ctx = super::super::context::build("n", &Default::default(), &Default::default());
        let err = c.render(&ctx).unwrap_err();
        assert!(
            matches!(err, RenderError::Template { line: Some(2), .. }),
            "{err}"
        );
    }
}
