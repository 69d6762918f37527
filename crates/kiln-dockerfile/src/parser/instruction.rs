//! One logical line to one [`Node`]: keyword, flags, and the argument rules of each
//! instruction (BuildKit's `splitCommand` and its per-instruction line parsers).

use super::json::{self, JsonArgs};
use super::lines::{offset_in, Joined};
use super::words::{cut_at_separator, extract_flags, split_quoted, split_separators};
use crate::ast::Node;
use crate::error::{Error, Span};

/// How many `ONBUILD`s may be chained (`ONBUILD ONBUILD ...`). BuildKit's parser has no limit but its next stage
/// rejects any chaining; the cap keeps nesting (and the recursion over it) small.
pub const MAX_ONBUILD_DEPTH: usize = 8;

/// What an instruction line is parsed against.
pub(crate) struct Ctx<'a> {
    /// The whole logical line; every text handled here is a slice of it.
    pub joined: &'a Joined,
    /// The escape character in effect.
    pub escape: char,
    /// Span of the whole instruction, for errors that cannot be pinned down further.
    pub fallback: Span,
}

impl Ctx<'_> {
    /// The source span of `sub`, a slice of the logical line.
    fn span_of(&self, sub: &str) -> Span {
        self.joined.span_of(sub, self.fallback)
    }

    /// The source span of `range` within `text`, a slice of the logical line.
    fn span_within(&self, text: &str, range: std::ops::Range<usize>) -> Span {
        let base = offset_in(&self.joined.text, text);
        self.joined
            .span(base + range.start..base + range.end, self.fallback)
    }
}

/// Parses `text` (a slice of `ctx.joined.text`) as one instruction. `depth` counts the
/// `ONBUILD`s around it. Line numbers and span are left for the caller to fill in.
pub(crate) fn parse(ctx: &Ctx<'_>, text: &str, depth: usize) -> Result<Node, Error> {
    let trimmed = text.trim();
    let (keyword, rest) = cut_at_separator(trimmed).unwrap_or((trimmed, ""));
    let (args, flags) = extract_flags(rest, ctx.escape);
    let args = args.trim();
    let mut node = Node {
        keyword: super::go_lowercase(keyword),
        flags,
        args: Vec::new(),
        json: false,
        inner: None,
        heredocs: Vec::new(),
        original: text.to_string(),
        start_line: 0,
        end_line: 0,
        span: ctx.span_of(trimmed),
    };
    match node.keyword.as_str() {
        "from" | "expose" => node.args = split_separators(args),
        "add" | "copy" | "volume" => {
            (node.args, node.json) = match json_args(ctx, args)? {
                Some(items) => (items, true),
                None => (split_separators(args), false),
            }
        }
        "run" | "cmd" | "entrypoint" | "shell" => (node.args, node.json) = maybe_json(ctx, args)?,
        "healthcheck" => (node.args, node.json) = healthcheck(ctx, args)?,
        "env" => node.args = name_values(ctx, args, "ENV")?,
        "label" => node.args = name_values(ctx, args, "LABEL")?,
        "arg" => {
            node.args = split_quoted(args, ctx.escape)
                .into_iter()
                .map(|w| w.text)
                .collect()
        }
        "maintainer" | "user" | "workdir" | "stopsignal" => node.args = whole(args),
        "onbuild" => node.inner = onbuild(ctx, keyword, args, depth)?.map(Box::new),
        // Unknown instructions are rejected later; here they keep one empty argument.
        _ => node.args = vec![String::new()],
    }
    Ok(node)
}

/// The text as one argument, none when empty.
fn whole(args: &str) -> Vec<String> {
    if args.is_empty() {
        Vec::new()
    } else {
        vec![args.to_string()]
    }
}

/// The elements of a JSON array of strings, `None` when `args` is not a JSON array.
fn json_args(ctx: &Ctx<'_>, args: &str) -> Result<Option<Vec<String>>, Error> {
    match json::parse_args(args) {
        JsonArgs::Strings(items) => Ok(Some(items)),
        JsonArgs::NotJson => Ok(None),
        JsonArgs::NotStrings => Err(Error::new(
            "when using JSON array syntax, arrays must be comprised of strings only",
            ctx.span_of(args),
        )
        .with_help("quote every element, e.g. [\"echo\", \"1\"]")),
    }
}

/// `RUN`, `CMD`, `ENTRYPOINT`, `SHELL`: a JSON array, or the whole text as one argument.
fn maybe_json(ctx: &Ctx<'_>, args: &str) -> Result<(Vec<String>, bool), Error> {
    if args.is_empty() {
        return Ok((Vec::new(), false));
    }
    Ok(match json_args(ctx, args)? {
        Some(items) => (items, true),
        None => (vec![args.to_string()], false),
    })
}

/// `HEALTHCHECK`: the first word as written, then the rest like `RUN`.
fn healthcheck(ctx: &Ctx<'_>, args: &str) -> Result<(Vec<String>, bool), Error> {
    if args.is_empty() {
        return Ok((Vec::new(), false));
    }
    let (kind, command) = match args.find(char::is_whitespace) {
        Some(at) => (&args[..at], args[at..].trim_start()),
        None => (args, ""),
    };
    let (mut command, json) = maybe_json(ctx, command)?;
    command.insert(0, kind.to_string());
    Ok((command, json))
}

/// `ENV` and `LABEL`: key, value and separator for each pair, in the legacy `KEY value` form
/// (separator `""`) or the `key=value ...` form (separator `=`). Values keep their quotes.
fn name_values(ctx: &Ctx<'_>, args: &str, instruction: &str) -> Result<Vec<String>, Error> {
    let words = split_quoted(args, ctx.escape);
    let Some(first) = words.first() else {
        return Ok(Vec::new());
    };
    if !first.text.contains('=') {
        let Some((key, value)) = cut_at_separator(args) else {
            return Err(Error::new(
                format!("{instruction} must have two arguments"),
                ctx.span_of(args),
            )
            .with_help(format!(
                "write `{instruction} key=value` or `{instruction} key value`"
            )));
        };
        return Ok(vec![key.to_string(), value.to_string(), String::new()]);
    }
    let mut out = Vec::with_capacity(words.len() * 3);
    for word in words {
        let Some((key, value)) = word.text.split_once('=') else {
            return Err(Error::new(
                format!(
                    "Syntax error - can't find = in {}. Must be of the form: name=value",
                    super::go_quote(&word.text)
                ),
                ctx.span_within(args, word.range),
            ));
        };
        out.extend([key.to_string(), value.to_string(), "=".to_string()]);
    }
    Ok(out)
}

/// `ONBUILD`: the rest is an instruction of its own.
fn onbuild(ctx: &Ctx<'_>, keyword: &str, args: &str, depth: usize) -> Result<Option<Node>, Error> {
    if args.is_empty() {
        return Ok(None);
    }
    // This is ONBUILD number `depth + 1` of the chain.
    if depth >= MAX_ONBUILD_DEPTH {
        return Err(Error::new(
            format!("more than {MAX_ONBUILD_DEPTH} ONBUILD instructions nested in one another"),
            ctx.span_of(keyword),
        )
        .with_help("ONBUILD triggers cannot be chained"));
    }
    parse(ctx, args, depth + 1).map(Some)
}
