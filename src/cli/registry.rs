//! `mlpipe registry list|show|promote|rollback`.

use super::{RegistryArgs, RegistryCommand};
use crate::config::{self, Overrides};
use crate::error::{Error, Result};
use crate::registry::Registry;

pub async fn registry(a: RegistryArgs) -> Result<i32> {
    let p = config::compile_file(
        &a.pipeline,
        &Overrides {
            env: true,
            ..Default::default()
        },
    )?;
    let reg = Registry::open(&p.storage.registry)?;
    match a.command {
        RegistryCommand::List => print!("{}", list(&reg).await?),
        RegistryCommand::Show { target } => {
            println!("{}", show(&reg, &target, &p.storage.registry).await?)
        }
        RegistryCommand::Promote { model, version } => {
            let st = reg.promote(&model, version, "promoted by hand").await?;
            println!(
                "{model}: production is v{}",
                st.production.unwrap_or(version)
            );
        }
        RegistryCommand::Rollback { model } => {
            let st = reg.rollback(&model).await?;
            println!(
                "{model}: rolled back; production is v{}",
                st.production.unwrap_or_default()
            );
        }
    }
    Ok(0)
}

/// Every model: its production version, how many versions, the latest.
pub async fn list(reg: &Registry) -> Result<String> {
    let mut s = format!(
        "{:<16} {:<12} {:<10} latest\n",
        "model", "production", "versions"
    );
    for m in reg.models().await? {
        let st = reg.state(&m).await?;
        let latest = st
            .versions
            .values()
            .last()
            .map(|v| format!("v{} {}", v.version, v.status.as_str()))
            .unwrap_or_default();
        let prod = st
            .production
            .map(|v| format!("v{v}"))
            .unwrap_or_else(|| "—".into());
        s += &format!(
            "{:<16} {:<12} {:<10} {latest}\n",
            m,
            prod,
            st.versions.len()
        );
    }
    Ok(s)
}

/// One model's state (`MODEL`) or one version's document (`MODEL@VERSION`), as JSON.
pub async fn show(reg: &Registry, target: &str, root: &str) -> Result<String> {
    let (m, v) = match target.split_once('@') {
        Some((m, v)) => (
            m.to_string(),
            Some(
                v.trim_start_matches('v')
                    .parse::<u32>()
                    .map_err(|_| Error::Usage(format!("`{v}` is not a version number")))?,
            ),
        ),
        None => (target.to_string(), None),
    };
    let st = reg.state(&m).await?;
    if st.versions.is_empty() {
        return Err(Error::Usage(format!(
            "no model `{m}` in the registry at {root}"
        )));
    }
    let out = match v {
        Some(v) => serde_json::to_value(
            st.versions
                .get(&v)
                .ok_or_else(|| Error::Usage(format!("model `{m}` has no version {v}")))?,
        )?,
        None => serde_json::to_value(&st)?,
    };
    Ok(serde_json::to_string_pretty(&out)?)
}
