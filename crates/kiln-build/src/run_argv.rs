//! The process a `RUN` step starts: exec form as written, shell form through the image's
//! `SHELL`, and heredocs as BuildKit runs them.

use kiln_dockerfile::ast::Heredoc;
use kiln_dockerfile::instructions::CommandLine;

/// What to execute, and a script file to put in place first (a heredoc with a `#!` line).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StepCommand {
    /// argv.
    pub argv: Vec<String>,
    /// `(path inside the root, content)` of an executable script to create first.
    pub script: Option<(String, String)>,
}

/// Builds the command of a `RUN`:
///
/// * exec form: the argv as written;
/// * `RUN <<EOF` alone: the heredoc body is the script, run by the shell — or, when it starts
///   with `#!`, written to a file and executed directly (so `#!/usr/bin/env python3` works);
/// * shell form with heredocs elsewhere (`RUN cat <<EOF > f`): the line and the bodies go to the
///   shell together, which handles the redirections itself;
/// * plain shell form: `SHELL` + the line.
pub fn step_command(
    cmd: &CommandLine,
    heredocs: &[Heredoc],
    shell: &[String],
    expand: impl Fn(&str) -> String,
) -> StepCommand {
    let line = match cmd {
        CommandLine::Exec(argv) => {
            return StepCommand {
                argv: argv.clone(),
                script: None,
            }
        }
        CommandLine::Shell(line) => line,
    };
    let with_shell = |text: String| {
        shell
            .iter()
            .cloned()
            .chain(std::iter::once(text))
            .collect::<Vec<_>>()
    };
    if heredocs.is_empty() {
        return StepCommand {
            argv: with_shell(line.clone()),
            script: None,
        };
    }
    let body = |h: &Heredoc| {
        let Ok(text) = heredoc_text(h, |t| Ok::<_, std::convert::Infallible>(expand(t)));
        text
    };
    if let [only] = heredocs {
        let word = line.trim();
        let is_just_the_heredoc = word
            .trim_start_matches(|c: char| c.is_ascii_digit())
            .starts_with("<<")
            && !word.contains(char::is_whitespace);
        if is_just_the_heredoc {
            let script = body(only);
            if script.starts_with("#!") {
                let path = format!(
                    "/dev/.kiln-heredoc-{}",
                    only.name.replace(|c: char| !c.is_ascii_alphanumeric(), "_")
                );
                return StepCommand {
                    argv: vec![path.clone()],
                    script: Some((path, script)),
                };
            }
            return StepCommand {
                argv: with_shell(script),
                script: None,
            };
        }
    }
    let mut text = line.clone();
    for h in heredocs {
        text.push('\n');
        text.push_str(&h.content);
        text.push_str(&h.name);
    }
    StepCommand {
        argv: with_shell(text),
        script: None,
    }
}

/// A heredoc's body as the step sees it: leading tabs removed for `<<-`, variables expanded
/// unless the delimiter was quoted.
pub fn heredoc_text<E>(
    h: &Heredoc,
    expand: impl Fn(&str) -> Result<String, E>,
) -> Result<String, E> {
    let text = if h.chomp {
        kiln_dockerfile::parser::chomp_heredoc_content(&h.content)
    } else {
        h.content.clone()
    };
    if h.expand {
        expand(&text)
    } else {
        Ok(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(name: &str, content: &str, expand: bool) -> Heredoc {
        Heredoc {
            name: name.into(),
            file_descriptor: 0,
            expand,
            chomp: false,
            content: content.into(),
        }
    }

    fn sh() -> Vec<String> {
        vec!["/bin/sh".into(), "-c".into()]
    }

    #[test]
    fn forms() {
        let id = |s: &str| s.to_string();
        assert_eq!(
            step_command(&CommandLine::Exec(vec!["ls".into()]), &[], &sh(), id).argv,
            ["ls"]
        );
        assert_eq!(
            step_command(&CommandLine::Shell("echo hi".into()), &[], &sh(), id).argv,
            ["/bin/sh", "-c", "echo hi"]
        );
        let c = step_command(
            &CommandLine::Shell("<<EOF".into()),
            &[doc("EOF", "echo $A\n", true)],
            &sh(),
            |s| s.replace("$A", "x"),
        );
        assert_eq!(c.argv, ["/bin/sh", "-c", "echo x\n"]);
        let c = step_command(
            &CommandLine::Shell("<<'EOF'".into()),
            &[doc("EOF", "echo $A\n", false)],
            &sh(),
            |s| s.replace("$A", "x"),
        );
        assert_eq!(
            c.argv,
            ["/bin/sh", "-c", "echo $A\n"],
            "quoted delimiter: no expansion"
        );
        let c = step_command(
            &CommandLine::Shell("<<EOF".into()),
            &[doc("EOF", "#!/usr/bin/env python3\nprint(1)\n", true)],
            &sh(),
            id,
        );
        assert_eq!(c.argv, ["/dev/.kiln-heredoc-EOF"]);
        assert_eq!(c.script.unwrap().1, "#!/usr/bin/env python3\nprint(1)\n");
        let c = step_command(
            &CommandLine::Shell("cat <<EOF > /f".into()),
            &[doc("EOF", "a\n", true)],
            &sh(),
            id,
        );
        assert_eq!(c.argv, ["/bin/sh", "-c", "cat <<EOF > /f\na\nEOF"]);
    }
}
