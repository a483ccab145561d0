//! Grad-CAM on generated faces: the heat map of a trained network is highest where the
//! expression is drawn, i.e. where the peak frame of a sequence differs from its neutral first
//! frame (mouth, brows, eyes and wrinkles), on people the network never saw.

mod common;

use dexpression_dataset::crop::{crop_and_resize, landmark_box, CropBox};
use dexpression_dataset::DEFAULT_CROP_MARGIN;
use dexpression_model::batch_from_pixels;
use dexpression_model::candle_core::Device;

/// Input side: large enough for a 5 x 5 map, small enough to train in seconds.
const SIDE: usize = 96;

#[test]
fn grad_cam_is_highest_where_the_expression_is_drawn() {
    let dir = tempfile::tempdir().expect("temporary folder");
    let trained = common::train_small_model(dir.path(), SIDE, 12, 3, 6);

    // Every expression frame of the held-out people (the prepared dataset keeps the last frames
    // of each sequence, where the expression is strongest), each compared with its sequence's
    // neutral first frame: several frames a sequence make the hit rate below a measurement of
    // the network rather than of a handful of faces.
    let peaks: Vec<&dexpression_dataset::Sample> = trained
        .dataset
        .samples
        .iter()
        .filter(|sample| trained.held_out.contains(&sample.subject))
        .collect();
    assert!(peaks.len() >= 12, "only {} held-out sequences", peaks.len());

    let (mut hits, mut correct) = (0, 0);
    let mut ranked_len = 0;
    let mut energy_ratio = 0.0;
    let mut weighted_ratio = 0.0;
    for sample in &peaks {
        let frames = common::sequence_frames(&trained.synth, &sample.sequence);
        let neutral_path = &frames[0];
        let peak_image = image::open(&sample.source).expect("peak frame");
        let neutral_image = image::open(neutral_path).expect("neutral frame");
        let peak_points = common::landmarks_of(&trained.synth, &sample.source);
        let neutral_points = common::landmarks_of(&trained.synth, neutral_path);
        let face = landmark_box(
            &peak_points,
            DEFAULT_CROP_MARGIN,
            peak_image.width(),
            peak_image.height(),
        )
        .expect("a face box");
        // The head drifts a little between frames; the nose (landmarks 27-35) does not move
        // with the expression, so it tells how far.
        let nose = |points: &[[f32; 2]], axis: usize| {
            points[27..36].iter().map(|p| p[axis]).sum::<f32>() / 9.0
        };
        let shift = |axis: usize, start: u32| -> u32 {
            (start as f32 - (nose(&peak_points, axis) - nose(&neutral_points, axis)))
                .round()
                .max(0.0) as u32
        };
        let neutral_box = CropBox {
            x: shift(0, face.x),
            y: shift(1, face.y),
            ..face
        };
        let peak = crop_and_resize(&peak_image, Some(face), SIDE as u32);
        let neutral = crop_and_resize(&neutral_image, Some(neutral_box), SIDE as u32);

        let batch = batch_from_pixels(&peak, SIDE, &Device::Cpu).expect("batch");
        let explained = trained
            .model
            .explain(&batch, None)
            .expect("Grad-CAM")
            .remove(0);
        let map = &explained.heatmap;
        if map.class == sample.label {
            correct += 1;
        }
        // How much the expression changed the face in each cell of the map.
        let (cells_x, cells_y) = (map.width, map.height);
        let mut energy = vec![0f64; cells_x * cells_y];
        for y in 0..SIDE {
            for x in 0..SIDE {
                let cell = (y * cells_y / SIDE) * cells_x + x * cells_x / SIDE;
                energy[cell] += f64::from(peak[y * SIDE + x].abs_diff(neutral[y * SIDE + x]));
            }
        }
        let hottest = (0..map.values.len())
            .max_by(|&a, &b| map.values[a].total_cmp(&map.values[b]))
            .expect("a non-empty map");
        let mut ranked: Vec<usize> = (0..energy.len()).collect();
        ranked.sort_by(|&a, &b| energy[b].total_cmp(&energy[a]));
        let top_third = ranked.len().div_ceil(3);
        ranked_len = ranked.len();
        if ranked[..top_third].contains(&hottest) {
            hits += 1;
        }
        let mean_energy = energy.iter().sum::<f64>() / energy.len() as f64;
        energy_ratio += energy[hottest] / mean_energy / peaks.len() as f64;
        let heat_total: f64 = map.values.iter().map(|&v| f64::from(v.max(0.0))).sum();
        if heat_total > 0.0 {
            let weighted: f64 = map
                .values
                .iter()
                .zip(&energy)
                .map(|(&v, e)| f64::from(v.max(0.0)) * e)
                .sum();
            weighted_ratio += weighted / heat_total / mean_energy / peaks.len() as f64;
        }
    }
    let hit_rate = hits as f64 / peaks.len() as f64;
    eprintln!(
        "{} held-out faces, {correct} classified right; the hottest cell is among the third of cells that changed most in {hits} ({:.0}%); it changed {energy_ratio:.2}x as much as the average cell; heat-weighted {weighted_ratio:.2}x",
        peaks.len(),
        100.0 * hit_rate
    );
    // By chance the hottest cell would land in the top third of the cells a third of the time
    // (`chance`), and change as much as the average cell. The hit rate must clear chance by two
    // standard errors of a rate over this many faces: a fixed bar over a few faces failed or
    // passed with the rounding of the training run (another CPU, another kernel).
    let cells = ranked_len as f64;
    let chance = (cells / 3.0).ceil() / cells;
    let bar = chance + 2.0 * (chance * (1.0 - chance) / peaks.len() as f64).sqrt();
    assert!(
        hit_rate >= bar,
        "the heat map peaks where the expression is drawn in only {:.0}% of the faces (chance {:.0}%, bar {:.0}%)",
        100.0 * hit_rate,
        100.0 * chance,
        100.0 * bar
    );
    assert!(
        energy_ratio >= 1.5,
        "the hottest cells changed only {energy_ratio:.2}x as much as the average"
    );
}
