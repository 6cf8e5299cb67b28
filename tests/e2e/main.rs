//! End-to-end tests: the real `rollgate` and `rollgate-agent` binaries on
//! loopback addresses, real certificates, real files.

mod support;

mod agent_backup;
mod agent_crash;
mod agent_ops;
mod agent_restart;
mod agent_stage;
mod ansible_role;
mod bad_config;
mod bad_input;
mod chaos;
mod cli_docs;
mod compose;
mod deb;
mod demo_cmd;
mod deploy;
mod fencing;
mod full_disk;
mod inventory_import;
mod mtls;
mod operator_guide;
mod packages;
mod partition;
mod rehearse;
mod shared_state;
mod state_dir;
mod status;
mod upgrade;
mod zero_downtime;
