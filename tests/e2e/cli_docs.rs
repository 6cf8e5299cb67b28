//! Shell completions and man pages, generated from the clap definitions:
//! they load in the real shells and render with the real `man`.

use std::process::Command;

use crate::support::Sandbox;

#[test]
fn bash_completion_completes_subcommands_and_options() {
    let sb = Sandbox::new();
    let out = sb.rollgate(&["completions", "bash"]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let script = sb.path().join("rollgate.bash");
    std::fs::write(&script, &out.stdout).unwrap();
    // What bash does on `rollgate up<TAB>` and `rollgate upgrade --t<TAB>`.
    let complete = |words: &str, cword: usize| {
        let probe = format!(
            "source {}; COMP_WORDS=({words}); COMP_CWORD={cword}; _rollgate rollgate \"${{COMP_WORDS[$COMP_CWORD]}}\" \"${{COMP_WORDS[$COMP_CWORD-1]}}\"; printf '%s\\n' \"${{COMPREPLY[@]}}\"",
            script.display()
        );
        let out = Command::new("bash").arg("-c").arg(&probe).output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let commands = complete("rollgate up", 1);
    assert_eq!(commands.trim(), "upgrade", "{commands}");
    let options = complete("rollgate upgrade --t", 2);
    assert!(options.lines().any(|l| l == "--to"), "{options}");
}

#[test]
fn zsh_and_fish_completions_are_generated_and_a_bad_shell_is_refused() {
    let sb = Sandbox::new();
    let zsh = sb.rollgate(&["completions", "zsh"]);
    assert_eq!(zsh.code, Some(0), "{}", zsh.stderr);
    assert!(
        zsh.stdout.starts_with("#compdef rollgate"),
        "{}",
        zsh.stdout
    );
    let fish = sb.rollgate(&["completions", "fish"]);
    assert_eq!(fish.code, Some(0), "{}", fish.stderr);
    assert!(
        fish.stdout.contains("complete -c rollgate"),
        "{}",
        fish.stdout
    );
    let bad = sb.rollgate(&["completions", "tcsh"]);
    assert_eq!(bad.code, Some(64), "{}", bad.stderr);
    assert!(
        bad.stderr.contains("tcsh") && bad.stderr.contains("bash"),
        "{}",
        bad.stderr
    );
}

#[test]
fn man_pages_render_with_man() {
    let sb = Sandbox::new();
    let dir = sb.path().join("man");
    let out = sb.rollgate(&["man", "--dir", &dir.display().to_string()]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    for (page, mentions) in [
        ("rollgate.1", "upgrade"),
        ("rollgate-upgrade.1", "--to"),
        ("rollgate-resume.1", "ROLLOUT"),
        ("rollgate-certs-init.1", "--agent"),
        ("rollgate-agent.8", "--check"),
    ] {
        let file = dir.join(page);
        assert!(
            file.is_file(),
            "{page} written: {:?}",
            std::fs::read_dir(&dir).unwrap().count()
        );
        let shown = Command::new("man")
            .args(["-l", "-P", "cat"])
            .arg(&file)
            .env("MANWIDTH", "100")
            .output()
            .expect("run man");
        let text = String::from_utf8_lossy(&shown.stdout);
        assert!(
            shown.status.success(),
            "man -l {page}: {}",
            String::from_utf8_lossy(&shown.stderr)
        );
        assert!(
            text.contains(mentions),
            "{page} mentions {mentions}:\n{text}"
        );
    }
}
