//! The Ansible role that bootstraps agents (`deploy/ansible/`): the playbook
//! passes `ansible-playbook --syntax-check`, and the `agent.toml` its
//! template renders for a host is one the real agent accepts. Ansible runs
//! with a local connection and writes only into the sandbox: the role
//! itself (package install, systemd) is never run against this machine.

use std::path::Path;
use std::process::{Command, Output};

use crate::support::{AGENT, Sandbox, output_text};

const ANSIBLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/ansible");

/// ansible-playbook with its temporary files kept in the sandbox.
fn playbook(sb: &Sandbox, args: &[&str]) -> Output {
    let home = sb.path().join("ansible-home");
    Command::new("ansible-playbook")
        .args(args)
        .env("ANSIBLE_HOME", &home)
        .env("ANSIBLE_LOCAL_TEMP", home.join("tmp"))
        .env("ANSIBLE_NOCOLOR", "1")
        .env("ANSIBLE_RETRY_FILES_ENABLED", "0")
        .output()
        .expect("ansible-playbook runs (deploy/prereqs.sh installs ansible-core)")
}

fn inventory(sb: &Sandbox) -> std::path::PathBuf {
    let p = sb.path().join("hosts.ini");
    std::fs::write(
        &p,
        "[gateway_cp]\ncp-1 ansible_host=127.0.0.1\n\n[gateway_dp]\ndp-1 ansible_host=127.0.0.2\ndp-2 ansible_host=127.0.0.3\n",
    )
    .unwrap();
    p
}

#[test]
fn the_agent_playbook_passes_ansible_syntax_check() {
    let sb = Sandbox::new();
    let inv = inventory(&sb);
    let out = playbook(
        &sb,
        &[
            "--syntax-check",
            "-i",
            inv.to_str().unwrap(),
            &format!("{ANSIBLE}/agents.yml"),
        ],
    );
    assert!(out.status.success(), "{}", output_text(&out));

    // The check can fail: a task with two modules is refused.
    let broken = sb.path().join("broken");
    std::fs::create_dir_all(broken.join("roles")).unwrap();
    let status = Command::new("cp")
        .args(["-r", &format!("{ANSIBLE}/roles/rollgate_agent")])
        .arg(broken.join("roles"))
        .status()
        .unwrap();
    assert!(status.success());
    std::fs::copy(format!("{ANSIBLE}/agents.yml"), broken.join("agents.yml")).unwrap();
    let tasks = broken.join("roles/rollgate_agent/tasks/main.yml");
    let mut t = std::fs::read_to_string(&tasks).unwrap();
    t.push_str("\n- name: Two modules in one task\n  ansible.builtin.copy: {src: a, dest: b}\n  ansible.builtin.file: {path: b}\n");
    std::fs::write(&tasks, t).unwrap();
    let out = playbook(
        &sb,
        &[
            "--syntax-check",
            "-i",
            inv.to_str().unwrap(),
            broken.join("agents.yml").to_str().unwrap(),
        ],
    );
    assert!(!out.status.success(), "{}", output_text(&out));
}

#[test]
fn the_roles_agent_toml_is_accepted_by_the_agent() {
    let sb = Sandbox::new();
    let inv = inventory(&sb);
    // dp-1's certificates, in a directory standing for /etc/rollgate.
    let certs = sb.path().join("etc-rollgate");
    let out = sb.rollgate(&[
        "certs",
        "init",
        "--dir",
        certs.to_str().unwrap(),
        "--agent",
        "dp-1=127.0.0.2",
    ]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    // The role's defaults and template, rendered for dp-1 into the sandbox.
    let rendered = sb.path().join("dp-1.toml");
    let render = sb.path().join("render.yml");
    std::fs::write(
        &render,
        format!(
            "- hosts: dp-1\n  connection: local\n  gather_facts: false\n  tasks:\n    - ansible.builtin.include_vars: {ANSIBLE}/roles/rollgate_agent/defaults/main.yml\n    - ansible.builtin.template:\n        src: {ANSIBLE}/roles/rollgate_agent/templates/agent.toml.j2\n        dest: {}\n",
            rendered.display()
        ),
    )
    .unwrap();
    let out = playbook(
        &sb,
        &[
            "-i",
            inv.to_str().unwrap(),
            "-e",
            &format!("rollgate_config_dir={}", certs.display()),
            // The local "host" is this machine: the Python running Ansible.
            "-e",
            "ansible_python_interpreter={{ ansible_playbook_python }}",
            render.to_str().unwrap(),
        ],
    );
    assert!(out.status.success(), "{}", output_text(&out));
    let toml = std::fs::read_to_string(&rendered).unwrap();
    assert!(
        toml.contains("name = \"dp-1\"") && toml.contains("role = \"dp\""),
        "{toml}"
    );
    let check = Command::new(AGENT)
        .args(["--check", "--config"])
        .arg(&rendered)
        .output()
        .unwrap();
    assert!(check.status.success(), "{}\n{toml}", output_text(&check));
    assert!(Path::new(&rendered).exists());
}
