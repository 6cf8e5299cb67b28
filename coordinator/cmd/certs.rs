//! `rollgate certs init`: a fleet CA (made, or reused from the directory),
//! a client certificate for the coordinator and one server certificate per
//! agent. The certificate-making itself is `crate::certs`.

use crate::Failure;
use crate::certs;
use crate::cli::CertsInitArgs;
use crate::output::{Output, print_json};

pub fn init(a: CertsInitArgs) -> Result<(), Failure> {
    let clients = if a.clients.is_empty() && !a.dir.join("ca.pem").exists() {
        vec![certs::DEFAULT_CLIENT.to_string()]
    } else {
        a.clients
    };
    let w =
        certs::init(&a.dir, &clients, &a.agents, a.force, a.valid_days).map_err(|e| match e {
            certs::CertsError::Rcgen(_) => Failure::Failed(e.to_string()),
            _ => Failure::Usage(e.to_string()),
        })?;
    match a.output {
        Output::Json => print_json(&w),
        Output::Text => {
            if w.ca_reused {
                println!("using the existing CA in {}", w.dir.display());
            }
            for f in &w.files {
                println!("wrote {}", f.display());
            }
            println!(
                "next: on each host put ca.pem, <host>.pem and <host>.key in /etc/rollgate/ \
                     (see deploy/agent.toml); the inventory's [tls] names ca.pem and the client's .pem/.key"
            );
        }
    }
    Ok(())
}
