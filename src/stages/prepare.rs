//! `prepare`: fixes the train/holdout split of the validated rows by key (see
//! [`crate::data::split`]: a customer never changes side between runs). Writes `prepare.json`,
//! the [`Recipe`]: the clean data it refers to, the rule, and the row counts. Each model fits its
//! own feature transform on the training side (see the `train` stage).

use serde::{Deserialize, Serialize};

use super::context::StageCtx;
use super::{OutputRecord, StageDone};
use crate::data::split;
use crate::error::{Error, Result};

/// The recipe `prepare.json` holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Recipe {
    pub dataset: String,
    /// The clean rows (the validate stage's output) the models train on.
    pub source: OutputRecord,
    pub key: Vec<String>,
    pub holdout: f64,
    pub rule: String,
    pub rows: u64,
    pub train_rows: u64,
    pub holdout_rows: u64,
}

impl Recipe {
    /// Bucket below this: training side.
    pub fn cut(&self) -> u8 {
        split::cut(self.holdout)
    }
}

/// What a prepare stage reports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub rows: u64,
    pub train_rows: u64,
    pub holdout_rows: u64,
}

pub async fn run(ctx: &StageCtx, dataset: &str, holdout: f64) -> Result<StageDone> {
    let name = format!("{dataset}.clean");
    let source = ctx.upstream_output(&name, "validate")?;
    let table = ctx.read_table(&source).await?;
    let key = ctx.pipeline().datasets[dataset].primary_key.clone();
    let b = split::split_buckets(&table, dataset)?;
    let mut recipe = Recipe {
        dataset: dataset.to_string(),
        source,
        key,
        holdout,
        rule: split::RULE.into(),
        rows: table.num_rows() as u64,
        train_rows: 0,
        holdout_rows: 0,
    };
    let cut = recipe.cut();
    recipe.train_rows = b.iter().filter(|&&x| x < cut).count() as u64;
    recipe.holdout_rows = recipe.rows - recipe.train_rows;
    if recipe.train_rows == 0 || recipe.holdout_rows == 0 {
        return Err(Error::Data(format!(
            "dataset `{dataset}` has {} clean rows, too few to split into training and holdout sides",
            recipe.rows
        )));
    }
    ctx.write_json("prepare", "prepare.json", &recipe).await?;
    Ok(StageDone::new(Summary {
        rows: recipe.rows,
        train_rows: recipe.train_rows,
        holdout_rows: recipe.holdout_rows,
    }))
}
