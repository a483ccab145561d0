//! Drawing: accuracy and loss curves (PNG and SVG) and confusion-matrix heatmaps (PNG).
//!
//! Text is drawn with DejaVu Sans embedded in the crate and registered with plotters' `ab_glyph`
//! backend once, so no system font or fontconfig is needed.

use std::path::Path;
use std::sync::OnceLock;

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use plotters::style::FontTransform;

use crate::error::{Error, Result};
use crate::history::History;

/// DejaVu Sans (Bitstream Vera licence, see `assets/LICENSE-DejaVu.txt`).
static EMBEDDED_FONT: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");
/// The family name every text style below asks for; plotters' `("sans-serif", size)` maps here.
const FONT_FAMILY: &str = "sans-serif";

/// Size of the curve figures (two panels side by side), in pixels.
pub const CURVES_SIZE: (u32, u32) = (1200, 500);
/// Size of a confusion-matrix figure, in pixels.
pub const CONFUSION_SIZE: (u32, u32) = (820, 740);

/// matplotlib's `tab10`, so fold colours match the port's figures.
const FOLD_COLOURS: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

/// How far above the requested point plotters' `ab_glyph` backend draws capitals that are
/// centred vertically, as a fraction of the font size (it puts the baseline half a size below the
/// layout box top, not at the font's ascent); added back so labels sit in the middle of cells.
const AB_GLYPH_CENTRE_SHIFT: f64 = 0.27;

fn centre_shift(size: f64) -> i32 {
    (size * AB_GLYPH_CENTRE_SHIFT).round() as i32
}

/// Registers the embedded font with plotters; later calls only return the first outcome.
pub(crate) fn register_embedded_font() -> Result<()> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let registered = *REGISTERED.get_or_init(|| {
        plotters::style::register_font(FONT_FAMILY, FontStyle::Normal, EMBEDDED_FONT).is_ok()
    });
    if registered {
        Ok(())
    } else {
        Err(Error::Font)
    }
}

/// Which pair of history columns a curve figure shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CurveMetric {
    Accuracy,
    Loss,
}

impl CurveMetric {
    fn axis_label(self) -> &'static str {
        match self {
            CurveMetric::Accuracy => "Accuracy (%)",
            CurveMetric::Loss => "Loss",
        }
    }

    fn panel_titles(self) -> [&'static str; 2] {
        match self {
            CurveMetric::Accuracy => ["Train accuracy", "Test accuracy"],
            CurveMetric::Loss => ["Train loss", "Test loss"],
        }
    }
}

/// One fold's curve points: (epoch, value) for train and for test, finite values only.
struct FoldCurves {
    fold: u32,
    train: Vec<(i64, f64)>,
    test: Vec<(i64, f64)>,
}

/// Draws the train|test panels of one metric, one line per fold, as a PNG and an SVG.
pub(crate) fn draw_curves(
    history: &History,
    metric: CurveMetric,
    png_path: &Path,
    svg_path: &Path,
) -> Result<()> {
    register_embedded_font()?;
    let curves: Vec<FoldCurves> = history
        .folds()
        .into_iter()
        .map(|fold| {
            let records = history.fold_records(fold);
            let points = |value: &dyn Fn(&crate::HistoryRow) -> f64| {
                records
                    .iter()
                    .map(|record| (i64::from(record.epoch), value(record)))
                    .filter(|(_, value)| value.is_finite())
                    .collect::<Vec<_>>()
            };
            match metric {
                CurveMetric::Accuracy => FoldCurves {
                    fold,
                    train: points(&|record| record.train_accuracy),
                    test: points(&|record| record.test_accuracy),
                },
                CurveMetric::Loss => FoldCurves {
                    fold,
                    train: points(&|record| record.train_loss),
                    test: points(&|record| record.test_loss),
                },
            }
        })
        .collect();

    let (width, height) = CURVES_SIZE;
    let mut pixels = vec![255u8; width as usize * height as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut pixels, CURVES_SIZE).into_drawing_area();
        draw_curve_panels(&root, &curves, metric).map_err(|err| draw_error(png_path, err))?;
        root.present().map_err(|err| draw_error(png_path, err))?;
    }
    save_png(png_path, &pixels, CURVES_SIZE)?;

    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, CURVES_SIZE).into_drawing_area();
        draw_curve_panels(&root, &curves, metric).map_err(|err| draw_error(svg_path, err))?;
        root.present().map_err(|err| draw_error(svg_path, err))?;
    }
    dexpression_fsio::write_bytes(svg_path, svg.as_bytes())?;
    Ok(())
}

fn draw_curve_panels<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    curves: &[FoldCurves],
    metric: CurveMetric,
) -> std::result::Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    root.fill(&WHITE)?;
    let all_points = curves
        .iter()
        .flat_map(|fold| fold.train.iter().chain(&fold.test));
    let (mut epoch_min, mut epoch_max) = (i64::MAX, i64::MIN);
    let (mut value_min, mut value_max) = (f64::INFINITY, f64::NEG_INFINITY);
    for &(epoch, value) in all_points {
        epoch_min = epoch_min.min(epoch);
        epoch_max = epoch_max.max(epoch);
        value_min = value_min.min(value);
        value_max = value_max.max(value);
    }
    if epoch_min > epoch_max {
        (epoch_min, epoch_max) = (0, 1);
    }
    if epoch_min == epoch_max {
        // A single epoch still gets an axis with room on both sides of its point.
        epoch_min -= 1;
        epoch_max += 1;
    }
    // Both panels share one value range so train and test can be compared by eye.
    let value_range = value_axis_range(metric, value_min, value_max);

    // Enough decimals to tell the ticks apart, no more (plotters' default prints "100.0").
    let value_span = value_range.end - value_range.start;
    let y_decimals = if value_span >= 10.0 {
        0
    } else if value_span >= 1.0 {
        1
    } else {
        2
    };

    let panels = root.split_evenly((1, 2));
    for ((panel, title), is_train) in panels.iter().zip(metric.panel_titles()).zip([true, false]) {
        let mut chart = ChartBuilder::on(panel)
            .caption(title, (FONT_FAMILY, 22))
            .margin(14)
            .x_label_area_size(48)
            .y_label_area_size(64)
            .build_cartesian_2d(epoch_min..epoch_max, value_range.clone())?;
        chart
            .configure_mesh()
            .x_desc("Epoch")
            .y_desc(metric.axis_label())
            .label_style((FONT_FAMILY, 14))
            .axis_desc_style((FONT_FAMILY, 16))
            .light_line_style(RGBColor(238, 238, 238))
            .y_label_formatter(&|value| format!("{value:.y_decimals$}"))
            .draw()?;
        for fold in curves {
            let colour =
                FOLD_COLOURS[(fold.fold as usize + FOLD_COLOURS.len() - 1) % FOLD_COLOURS.len()];
            let points = if is_train { &fold.train } else { &fold.test };
            chart
                .draw_series(LineSeries::new(
                    points.iter().copied(),
                    colour.stroke_width(2),
                ))?
                .label(format!("Fold {}", fold.fold))
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(2))
                });
            // Markers keep a fold that has finished a single epoch visible.
            if points.len() < 2 {
                chart.draw_series(
                    points
                        .iter()
                        .map(|&point| Circle::new(point, 3, colour.filled())),
                )?;
            }
        }
        let legend_position = match metric {
            CurveMetric::Accuracy => SeriesLabelPosition::LowerRight,
            CurveMetric::Loss => SeriesLabelPosition::UpperRight,
        };
        chart
            .configure_series_labels()
            .position(legend_position)
            .label_font((FONT_FAMILY, 14))
            .background_style(WHITE.mix(0.85))
            .border_style(RGBColor(180, 180, 180))
            .draw()?;
    }
    Ok(())
}

fn value_axis_range(metric: CurveMetric, min: f64, max: f64) -> std::ops::Range<f64> {
    if !min.is_finite() || !max.is_finite() {
        return match metric {
            CurveMetric::Accuracy => 0.0..100.0,
            CurveMetric::Loss => 0.0..1.0,
        };
    }
    let padding = ((max - min) * 0.05).max(0.5 * f64::EPSILON.sqrt());
    match metric {
        CurveMetric::Accuracy => {
            let low = (min - padding).max(0.0);
            let high = (max + padding).min(100.0);
            if high - low < 1.0 {
                (low - 0.5).max(0.0)..(high + 0.5).min(100.5)
            } else {
                low..high
            }
        }
        CurveMetric::Loss => {
            // Losses are non-negative, so the axis starts at zero as the port's plots do.
            let low = if min >= 0.0 { 0.0 } else { min - padding };
            let high = if max > low { max + padding } else { low + 1.0 };
            low..high
        }
    }
}

/// Draws a row-normalised confusion matrix as a PNG: each cell is coloured by the fraction of
/// its row (true class) and shows that fraction with the count beneath it.
///
/// `counts[truth][predicted]` must be square; class names label both axes (missing names are
/// shown as `class N`). The image is [`CONFUSION_SIZE`] pixels.
pub fn draw_confusion_matrix(
    counts: &[Vec<u64>],
    class_names: &[String],
    title: &str,
    path: impl AsRef<Path>,
) -> Result<()> {
    let path = path.as_ref();
    register_embedded_font()?;
    let n_classes = counts.len();
    let names: Vec<String> = (0..n_classes)
        .map(|class_idx| {
            class_names
                .get(class_idx)
                .cloned()
                .unwrap_or_else(|| format!("class {class_idx}"))
        })
        .collect();
    let (width, height) = CONFUSION_SIZE;
    let mut pixels = vec![255u8; width as usize * height as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut pixels, CONFUSION_SIZE).into_drawing_area();
        draw_confusion_on(&root, counts, &names, title).map_err(|err| draw_error(path, err))?;
        root.present().map_err(|err| draw_error(path, err))?;
    }
    save_png(path, &pixels, CONFUSION_SIZE)
}

fn draw_confusion_on<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    counts: &[Vec<u64>],
    names: &[String],
    title: &str,
) -> std::result::Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    root.fill(&WHITE)?;
    let (width, height) = root.dim_in_pixel();
    let (width, height) = (width as i32, height as i32);
    let n_classes = names.len().max(1) as i32;
    let centred = Pos::new(HPos::Center, VPos::Center);

    root.draw(&Text::new(
        title.to_string(),
        (width / 2, 26),
        TextStyle::from((FONT_FAMILY, 22).into_font()).pos(centred),
    ))?;

    // Class-name font: the largest size up to 15 px at which the longest name fits a cell.
    let colorbar_space = 110;
    let top = 64;
    let bottom_space = 80;
    let longest_name = names
        .iter()
        .max_by_key(|name| name.chars().count())
        .cloned()
        .unwrap_or_default();
    let name_width_at =
        |size: u32| -> std::result::Result<i32, DrawingAreaErrorKind<DB::ErrorType>> {
            Ok(root
                .estimate_text_size(
                    &longest_name,
                    &TextStyle::from((FONT_FAMILY, size).into_font()),
                )?
                .0 as i32)
        };
    let mut name_size = 15;
    let mut left = 46 + name_width_at(name_size)?;
    let mut cell = ((width - left - colorbar_space) / n_classes)
        .min((height - top - bottom_space) / n_classes)
        .max(4);
    while name_size > 8 && name_width_at(name_size)? > cell - 4 {
        name_size -= 1;
        left = 46 + name_width_at(name_size)?;
        cell = ((width - left - colorbar_space) / n_classes)
            .min((height - top - bottom_space) / n_classes)
            .max(4);
    }
    let matrix_size = cell * n_classes;
    // Centre the matrix horizontally in what the labels and colour bar leave.
    let left = left + ((width - left - colorbar_space) - matrix_size).max(0) / 2;
    let name_style = TextStyle::from((FONT_FAMILY, name_size).into_font());

    let value_size = (cell as f64 * 0.24).clamp(8.0, 18.0);
    let count_size = (value_size * 0.75).max(8.0);
    for (row_idx, row) in counts.iter().enumerate() {
        let row_total: u64 = row.iter().sum();
        for (column_idx, &count) in row.iter().enumerate() {
            let x0 = left + column_idx as i32 * cell;
            let y0 = top + row_idx as i32 * cell;
            let fraction = (row_total > 0).then(|| count as f64 / row_total as f64);
            let fill = fraction.map(blues).unwrap_or(RGBColor(255, 255, 255));
            root.draw(&Rectangle::new(
                [(x0, y0), (x0 + cell, y0 + cell)],
                fill.filled(),
            ))?;
            let text_colour = if fraction.unwrap_or(0.0) > 0.55 {
                WHITE
            } else {
                BLACK
            };
            let centre = (x0 + cell / 2, y0 + cell / 2);
            let value_text = match fraction {
                Some(fraction) => format!("{fraction:.2}"),
                None => "–".to_string(),
            };
            let value_offset = if cell >= 34 {
                (value_size * 0.45) as i32
            } else {
                0
            };
            root.draw(&Text::new(
                value_text,
                (centre.0, centre.1 - value_offset + centre_shift(value_size)),
                TextStyle::from((FONT_FAMILY, value_size).into_font())
                    .color(&text_colour)
                    .pos(centred),
            ))?;
            if cell >= 34 {
                root.draw(&Text::new(
                    format!("({count})"),
                    (
                        centre.0,
                        centre.1 + (count_size * 0.8) as i32 + centre_shift(count_size),
                    ),
                    TextStyle::from((FONT_FAMILY, count_size).into_font())
                        .color(&text_colour)
                        .pos(centred),
                ))?;
            }
        }
    }
    // Grid lines between cells and a frame around the matrix.
    let grid = RGBColor(255, 255, 255).stroke_width(1);
    for line_idx in 1..n_classes {
        let offset = line_idx * cell;
        root.draw(&PathElement::new(
            vec![(left + offset, top), (left + offset, top + matrix_size)],
            grid,
        ))?;
        root.draw(&PathElement::new(
            vec![(left, top + offset), (left + matrix_size, top + offset)],
            grid,
        ))?;
    }
    root.draw(&Rectangle::new(
        [(left, top), (left + matrix_size, top + matrix_size)],
        BLACK.stroke_width(1),
    ))?;

    for (class_idx, name) in names.iter().enumerate() {
        let centre = left + class_idx as i32 * cell + cell / 2;
        root.draw(&Text::new(
            name.clone(),
            (
                left - 8,
                top + class_idx as i32 * cell + cell / 2 + centre_shift(f64::from(name_size)),
            ),
            name_style.clone().pos(Pos::new(HPos::Right, VPos::Center)),
        ))?;
        root.draw(&Text::new(
            name.clone(),
            (centre, top + matrix_size + 8),
            name_style.clone().pos(Pos::new(HPos::Center, VPos::Top)),
        ))?;
    }
    let axis_style = TextStyle::from((FONT_FAMILY, 17).into_font());
    root.draw(&Text::new(
        "Predicted label",
        (left + matrix_size / 2, top + matrix_size + 48),
        axis_style.clone().pos(Pos::new(HPos::Center, VPos::Top)),
    ))?;
    root.draw(&Text::new(
        "True label",
        (16, top + matrix_size / 2),
        TextStyle::from(
            (FONT_FAMILY, 17)
                .into_font()
                .transform(FontTransform::Rotate270),
        )
        .pos(centred),
    ))?;

    // Colour bar: the fraction scale, 0 at the bottom and 1 at the top.
    let bar_left = left + matrix_size + 28;
    let bar_width = 22;
    let n_steps = matrix_size.max(1);
    for step in 0..n_steps {
        let fraction = 1.0 - f64::from(step) / f64::from(n_steps);
        root.draw(&Rectangle::new(
            [
                (bar_left, top + step),
                (bar_left + bar_width, top + step + 1),
            ],
            blues(fraction).filled(),
        ))?;
    }
    root.draw(&Rectangle::new(
        [(bar_left, top), (bar_left + bar_width, top + matrix_size)],
        BLACK.stroke_width(1),
    ))?;
    for tick_idx in 0..=5 {
        let fraction = f64::from(tick_idx) / 5.0;
        let y = top + matrix_size - (fraction * f64::from(matrix_size)).round() as i32;
        root.draw(&PathElement::new(
            vec![(bar_left + bar_width, y), (bar_left + bar_width + 5, y)],
            BLACK.stroke_width(1),
        ))?;
        root.draw(&Text::new(
            format!("{fraction:.1}"),
            (bar_left + bar_width + 9, y + centre_shift(13.0)),
            TextStyle::from((FONT_FAMILY, 13).into_font()).pos(Pos::new(HPos::Left, VPos::Center)),
        ))?;
    }
    Ok(())
}

/// matplotlib's `Blues` colour map at `fraction` in [0, 1], linearly between its nine anchors.
fn blues(fraction: f64) -> RGBColor {
    const ANCHORS: [(u8, u8, u8); 9] = [
        (247, 251, 255),
        (222, 235, 247),
        (198, 219, 239),
        (158, 202, 225),
        (107, 174, 214),
        (66, 146, 198),
        (33, 113, 181),
        (8, 81, 156),
        (8, 48, 107),
    ];
    let position = fraction.clamp(0.0, 1.0) * (ANCHORS.len() - 1) as f64;
    let low_idx = (position.floor() as usize).min(ANCHORS.len() - 2);
    let weight = position - low_idx as f64;
    let (low, high) = (ANCHORS[low_idx], ANCHORS[low_idx + 1]);
    let mix = |a: u8, b: u8| (f64::from(a) + (f64::from(b) - f64::from(a)) * weight).round() as u8;
    RGBColor(mix(low.0, high.0), mix(low.1, high.1), mix(low.2, high.2))
}

fn save_png(path: &Path, pixels: &[u8], (width, height): (u32, u32)) -> Result<()> {
    dexpression_fsio::write_with(path, |out| {
        image::write_buffer_with_format(
            out,
            pixels,
            width,
            height,
            image::ExtendedColorType::Rgb8,
            image::ImageFormat::Png,
        )
        .map_err(|error| Error::Png {
            path: path.to_path_buf(),
            error,
        })
    })
}

fn draw_error<E: std::error::Error + Send + Sync>(
    path: &Path,
    err: DrawingAreaErrorKind<E>,
) -> Error {
    Error::Draw {
        path: path.to_path_buf(),
        message: err.to_string(),
    }
}
