//! Writes a generated `fer2013.csv` in FER2013's exact format, for trying the CSV reader or
//! timing it on the real file's size (35,887 rows):
//!
//! `cargo run --release -p dexpression-dataset --example write_fer2013 -- OUT.csv [ROWS] [SEED]`
//! then `cargo xtask prepare --source OUT.csv --image-size 48`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let out = args
        .next()
        .ok_or("usage: write_fer2013 OUT.csv [ROWS] [SEED]")?;
    let rows = match args.next() {
        Some(rows) => rows.parse()?,
        None => dexpression_dataset::synth::FER2013_ROWS,
    };
    let seed = match args.next() {
        Some(seed) => seed.parse()?,
        None => 0,
    };
    dexpression_dataset::synth::write_fer2013_csv(out.as_ref(), rows, seed)?;
    println!("{rows} rows written to {out}");
    Ok(())
}
