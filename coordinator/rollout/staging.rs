//! The staging phase: every hop's artifact on every host that needs it,
//! hosts in parallel (`coordinator.concurrency` wide), a host's hops in turn.
//! Nothing changes on a host yet; once the rollout halts no new stage starts.

use futures::StreamExt;
use rollgate::method::Method;
use rollgate::outcome::FailureCode;
use rollgate::version::Version;

use super::driver::{Driver, Halt};
use super::steps::op_id;
use crate::fleet::FleetApi;

impl<F: FleetApi> Driver<F> {
    /// Puts every hop's artifact on every host that needs it, in parallel.
    pub(super) async fn stage_all(&mut self) -> Result<(), Halt> {
        let spec = self.ctx.log().spec.clone();
        let Some(catalog) = self.catalog.clone() else {
            return Err(Halt::Other("no release catalog to stage from".into()));
        };
        // One list per host (`RolloutSpec::staged_for`): an agent runs one
        // step at a time, so a host's releases are staged in turn while
        // hosts go in parallel.
        let release = |v: &Version| {
            catalog.get(v).cloned().ok_or_else(|| {
                Halt::Other(format!(
                    "{v} is not in the catalog {}",
                    catalog.path.display()
                ))
            })
        };
        let mut jobs: Vec<(String, Method, Vec<rollgate::catalog::Release>)> = Vec::new();
        for h in &spec.hosts {
            let list = spec
                .staged_for(h)
                .into_iter()
                .map(release)
                .collect::<Result<Vec<_>, _>>()?;
            jobs.push((h.name.clone(), h.method, list));
        }
        let ctx = self.ctx.clone();
        let work = futures::stream::iter(jobs)
            .map(|(host, method, releases)| {
                let ctx = ctx.clone();
                async move {
                    for rel in releases {
                        let v = rel.version.clone();
                        let op = op_id(&ctx.rid, &host, "stage", Some(&v));
                        // Halting: no new call starts.
                        let Some(mut r) = ctx
                            .run_unless_halting(&host, "stage", Some(&v), &op, || {
                                ctx.fleet.stage(&host, &op, &rel, method)
                            })
                            .await
                        else {
                            return (host, Ok(()));
                        };
                        // A stage cut off by an agent restart was cleaned up: once more.
                        if matches!(&r, Err(f) if f.code == FailureCode::Interrupted) {
                            let op2 = format!("{op}.2");
                            match ctx
                                .run_unless_halting(&host, "stage", Some(&v), &op2, || {
                                    ctx.fleet.stage(&host, &op2, &rel, method)
                                })
                                .await
                            {
                                Some(again) => r = again,
                                None => return (host, Ok(())),
                            }
                        }
                        if let Err(f) = r {
                            return (host, Err(f));
                        }
                    }
                    (host, Ok(()))
                }
            })
            .buffer_unordered(self.parallel)
            .collect::<Vec<_>>();
        let (out, halt) = self.monitored(None, work).await;
        for (host, r) in out.unwrap_or_default() {
            if let Err(failure) = r {
                return Err(Halt::Step {
                    host,
                    step: "stage".into(),
                    failure: Box::new(failure),
                });
            }
        }
        halt.map_or(Ok(()), Err)
    }
}
