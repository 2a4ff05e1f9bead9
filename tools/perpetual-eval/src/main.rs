//! Fits `perpetual` on one model's split and writes its holdout predictions.
//!
//! Usage: perpetual-eval TRAIN.csv HOLDOUT.csv reg|bin BUDGET CAT_COLUMNS OUT.txt
//! The CSVs hold numeric feature columns (categories as integer codes, empty = missing) and the
//! target last. CAT_COLUMNS is a comma-separated list of categorical column indices (or "-").
//! Prints the fit time in seconds and the number of trees; `scripts/compare_lightgbm.py
//! --perpetual` runs it and scores the predictions with scikit-learn.
use perpetual::objective::Objective;
use perpetual::{Matrix, PerpetualBooster};
use std::collections::HashSet;
use std::time::Instant;

fn read(path: &str) -> (Vec<f64>, Vec<f64>, usize, usize) {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {path}: {e}"));
    let mut lines = text.lines();
    let cols = lines.next().expect("header").split(',').count() - 1;
    let mut columns = vec![Vec::new(); cols];
    let mut y = Vec::new();
    for line in lines {
        let vals: Vec<f64> = line.split(',').map(|v| if v.is_empty() { f64::NAN } else { v.parse().unwrap() }).collect();
        for (j, col) in columns.iter_mut().enumerate() {
            col.push(vals[j]);
        }
        y.push(vals[cols]);
    }
    let rows = y.len();
    (columns.concat(), y, rows, cols)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, train, holdout, kind, budget, cats, out] = &args[..] else {
        eprintln!("usage: perpetual-eval TRAIN.csv HOLDOUT.csv reg|bin BUDGET CAT_COLUMNS OUT.txt");
        std::process::exit(2);
    };
    let (x, y, rows, cols) = read(train);
    let (hx, _, hrows, _) = read(holdout);
    let cat: HashSet<usize> = cats.split(',').filter(|c| *c != "-").map(|c| c.parse().unwrap()).collect();
    let objective = if kind == "bin" { Objective::LogLoss } else { Objective::SquaredLoss };
    let start = Instant::now();
    let mut booster = PerpetualBooster::default()
        .set_objective(objective)
        .set_budget(budget.parse().unwrap())
        .set_num_threads(Some(2))
        .set_categorical_features(if cat.is_empty() { None } else { Some(cat) });
    booster.fit(&Matrix::new(&x, rows, cols), &y, None, None).expect("fit");
    let fit_s = start.elapsed().as_secs_f64();
    let pred = booster.predict(&Matrix::new(&hx, hrows, cols), true);
    let text: Vec<String> = pred.iter().map(|p| p.to_string()).collect();
    std::fs::write(out, text.join("\n")).unwrap();
    println!("{fit_s} {}", booster.get_prediction_trees().len());
}
