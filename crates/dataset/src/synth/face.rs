//! A procedurally drawn face: a subject's fixed traits, an expression's muscle settings, the 68
//! landmarks they imply (iBUG order, as in CK+), and the drawing made from those landmarks.

use super::raster::Canvas;
use crate::Expression;
use rand::Rng;

/// What stays the same across a subject's sequences.
#[derive(Debug, Clone)]
pub(crate) struct Subject {
    /// Face centre in the 640 x 490 frame.
    pub centre: [f32; 2],
    /// Half-width of the face.
    pub half_width: f32,
    /// Half-height of the face (forehead to chin).
    pub half_height: f32,
    /// Skin luminance.
    pub skin: f32,
    /// Background luminance.
    pub background: f32,
    /// Hair luminance.
    pub hair: f32,
    /// How far the hairline comes down (fraction of half-height above the centre).
    pub hairline: f32,
    /// Eye spacing as a fraction of half-width.
    pub eye_spacing: f32,
    /// Mouth half-width as a fraction of half-width.
    pub mouth_width: f32,
    /// Lip thickness as a fraction of half-height.
    pub lip_thickness: f32,
    /// Brow thickness in pixels.
    pub brow_thickness: f32,
    /// Side-to-side lighting gradient (-1..1).
    pub lighting: f32,
    /// RGB multipliers for colour frames.
    pub tint: [f32; 3],
}

impl Subject {
    pub fn random(rng: &mut impl Rng) -> Self {
        let half_width = rng.random_range(95.0..125.0);
        let skin = rng.random_range(120.0..205.0);
        // Keep the face distinct from the background either way.
        let background = if rng.random_bool(0.5) {
            rng.random_range(30.0..(skin - 45.0_f32).max(31.0))
        } else {
            rng.random_range((skin + 25.0_f32).min(229.0)..230.0)
        };
        let warm = rng.random_range(0.0..0.25);
        let tint = normalise_tint([1.0 + warm, 1.0, 1.0 - warm]);
        Subject {
            centre: [
                rng.random_range(270.0..370.0),
                rng.random_range(215.0..255.0),
            ],
            half_width,
            half_height: half_width * rng.random_range(1.22..1.38),
            skin,
            background,
            hair: rng.random_range(15.0..70.0),
            hairline: rng.random_range(0.74..0.86),
            eye_spacing: rng.random_range(0.36..0.44),
            mouth_width: rng.random_range(0.26..0.34),
            lip_thickness: rng.random_range(0.035..0.055),
            brow_thickness: rng.random_range(7.0..11.0),
            lighting: rng.random_range(-0.15..0.15),
            tint,
        }
    }
}

/// Scales an RGB multiplier so its luminance is 1 (the gray conversion then gives back the
/// drawn luminance).
fn normalise_tint(tint: [f32; 3]) -> [f32; 3] {
    let luminance = 0.299 * tint[0] + 0.587 * tint[1] + 0.114 * tint[2];
    tint.map(|channel| channel / luminance)
}

/// Facial action settings at full intensity; neutral is all zeros. Distances are fractions of
/// the face's half-height (vertical) or half-width (horizontal); negative `dy` is up.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Action {
    /// Whole-brow shift.
    pub brow_raise: f32,
    /// Extra shift of the brows' inner ends (negative: inner ends up, as in sadness).
    pub brow_inner: f32,
    /// Extra shift of the brows' outer ends.
    pub brow_outer: f32,
    /// Eye opening factor change (0 = neutral, +0.6 wide, -0.4 squint).
    pub eye_open: f32,
    /// Mouth width factor change.
    pub mouth_widen: f32,
    /// Vertical shift of the left (image-left) mouth corner.
    pub corner_left: f32,
    /// Vertical shift of the right mouth corner.
    pub corner_right: f32,
    /// Gap between the lips.
    pub mouth_open: f32,
    /// Upper lip raised above its rest line (disgust).
    pub upper_lip_raise: f32,
    /// Lip thickness factor change (negative: pressed lips).
    pub lip_press: f32,
    /// Teeth showing inside an open mouth.
    pub teeth: f32,
    /// Vertical lines between the brows (anger).
    pub glabella_lines: f32,
    /// Horizontal forehead lines (surprise, fear).
    pub forehead_lines: f32,
    /// Wrinkles across the nose root (disgust).
    pub nose_wrinkles: f32,
    /// Folds from nose to mouth corners and crow's feet (happiness).
    pub smile_folds: f32,
    /// Jaw drop, stretching the chin down.
    pub jaw_drop: f32,
}

impl Action {
    /// The settings of each expression at its peak. Chosen to follow the FACS prototypes
    /// (e.g. surprise AU1+2+5+26, sadness AU1+4+15, happiness AU6+12) with exaggerated
    /// amplitudes so the classes stay apart at 64 x 64 pixels.
    pub fn of(expression: Expression) -> Self {
        let neutral = Action::default();
        match expression {
            Expression::Anger => Action {
                brow_raise: 0.05,
                brow_inner: 0.08,
                eye_open: -0.15,
                mouth_widen: -0.15,
                lip_press: -0.6,
                corner_left: 0.015,
                corner_right: 0.015,
                glabella_lines: 1.0,
                ..neutral
            },
            Expression::Contempt => Action {
                corner_right: -0.09,
                corner_left: 0.01,
                mouth_widen: 0.05,
                lip_press: -0.25,
                eye_open: -0.1,
                brow_outer: -0.02,
                ..neutral
            },
            Expression::Disgust => Action {
                brow_raise: 0.04,
                brow_inner: 0.03,
                eye_open: -0.45,
                upper_lip_raise: 0.07,
                mouth_open: 0.03,
                corner_left: 0.04,
                corner_right: 0.04,
                nose_wrinkles: 1.0,
                ..neutral
            },
            Expression::Fear => Action {
                brow_raise: -0.08,
                brow_inner: -0.06,
                brow_outer: 0.03,
                eye_open: 0.7,
                mouth_widen: 0.25,
                mouth_open: 0.08,
                corner_left: 0.04,
                corner_right: 0.04,
                teeth: 0.6,
                forehead_lines: 0.7,
                ..neutral
            },
            Expression::Happiness => Action {
                eye_open: -0.35,
                mouth_widen: 0.3,
                corner_left: -0.12,
                corner_right: -0.12,
                mouth_open: 0.06,
                teeth: 1.0,
                smile_folds: 1.0,
                ..neutral
            },
            Expression::Sadness => Action {
                brow_inner: -0.09,
                brow_outer: 0.04,
                eye_open: -0.2,
                mouth_widen: -0.05,
                corner_left: 0.08,
                corner_right: 0.08,
                lip_press: 0.1,
                ..neutral
            },
            Expression::Surprise => Action {
                brow_raise: -0.13,
                eye_open: 0.8,
                mouth_widen: -0.3,
                mouth_open: 0.26,
                jaw_drop: 0.1,
                forehead_lines: 1.0,
                ..neutral
            },
            Expression::Neutral => neutral,
        }
    }

    /// This action at `intensity` (0 neutral .. 1 peak).
    pub fn scaled(self, intensity: f32) -> Self {
        let s = intensity;
        Action {
            brow_raise: self.brow_raise * s,
            brow_inner: self.brow_inner * s,
            brow_outer: self.brow_outer * s,
            eye_open: self.eye_open * s,
            mouth_widen: self.mouth_widen * s,
            corner_left: self.corner_left * s,
            corner_right: self.corner_right * s,
            mouth_open: self.mouth_open * s,
            upper_lip_raise: self.upper_lip_raise * s,
            lip_press: self.lip_press * s,
            teeth: self.teeth * s,
            glabella_lines: self.glabella_lines * s,
            forehead_lines: self.forehead_lines * s,
            nose_wrinkles: self.nose_wrinkles * s,
            smile_folds: self.smile_folds * s,
            jaw_drop: self.jaw_drop * s,
        }
    }
}

/// The 68 landmarks of `subject` showing `action`, with the head moved by `offset` pixels.
/// Index groups follow iBUG/CK+: jaw 0-16, brows 17-26, nose 27-35, eyes 36-47, mouth 48-67.
pub(crate) fn landmarks(subject: &Subject, action: &Action, offset: [f32; 2]) -> Vec<[f32; 2]> {
    let [cx, cy] = [subject.centre[0] + offset[0], subject.centre[1] + offset[1]];
    let (a, b) = (subject.half_width, subject.half_height);
    let at = |u: f32, v: f32| [cx + u * a, cy + v * b];
    let mut points = Vec::with_capacity(68);

    // Jaw: from the left ear down round the chin to the right ear; the jaw drop lengthens it.
    for i in 0..17 {
        let angle = std::f32::consts::PI * i as f32 / 16.0;
        let chin = 1.0 + action.jaw_drop;
        points.push(at(-angle.cos() * 0.96, -0.08 + (chin + 0.08) * angle.sin()));
    }
    // Brows: outer end first on the left brow, inner end first on the right brow.
    let brow = |side: f32, j: usize| {
        // j = 0 is the end nearer the face edge on the left brow (iBUG 17), reversed on the right.
        let along = if side < 0.0 {
            j as f32 / 4.0
        } else {
            1.0 - j as f32 / 4.0
        };
        let u = side * (0.72 - 0.56 * along); // From 0.72 (outer) to 0.16 (inner).
        let arch = 0.05 * (std::f32::consts::PI * (0.15 + 0.7 * (1.0 - along))).sin();
        let shift =
            action.brow_raise + action.brow_outer * (1.0 - along) + action.brow_inner * along;
        let arch_boost = if action.brow_raise < 0.0 {
            -action.brow_raise * 0.4
        } else {
            0.0
        };
        at(
            u,
            -0.42 - arch - arch_boost * (1.0 - (2.0 * along - 1.0).powi(2)) + shift,
        )
    };
    for j in 0..5 {
        points.push(brow(-1.0, j));
    }
    for j in 0..5 {
        points.push(brow(1.0, j));
    }
    // Nose bridge and nostrils.
    for i in 0..4 {
        points.push(at(0.0, -0.28 + 0.14 * i as f32));
    }
    for i in 0..5 {
        let u = -0.16 + 0.08 * i as f32;
        points.push(at(u, 0.2 + 0.03 * (1.0 - (u / 0.16).powi(2))));
    }
    // Eyes: corners, two upper and two lower lid points.
    let openness = (1.0 + action.eye_open).max(0.15);
    // Both eyes run left to right in the image, then back along the lower lid: the left eye
    // 36 outer, 37 38 upper, 39 inner, 40 41 lower; the right eye 42 inner, 43 44 upper, 45 outer,
    // 46 47 lower. So one shape serves both.
    let eye = |centre_u: f32| -> [[f32; 2]; 6] {
        let (half_w, half_h) = (0.17, 0.06 * openness);
        let c = |du: f32, dv: f32| at(centre_u + du, -0.2 + dv);
        let upper = |du: f32| c(du, -half_h - 0.01 * openness);
        let lower = |du: f32| c(du, half_h * 0.8);
        [
            c(-half_w, 0.0),
            upper(-half_w / 3.0),
            upper(half_w / 3.0),
            c(half_w, 0.0),
            lower(half_w / 3.0),
            lower(-half_w / 3.0),
        ]
    };
    points.extend(eye(-subject.eye_spacing));
    points.extend(eye(subject.eye_spacing));
    // Mouth: outer lip 48-59 from the left corner clockwise, inner lip 60-67.
    let half_mouth = subject.mouth_width * (1.0 + action.mouth_widen);
    let lip = subject.lip_thickness * (1.0 + action.lip_press).max(0.2);
    let mouth_v = 0.55 + action.jaw_drop * 0.5;
    let middle = |p: f32| {
        let corner = if p < 0.0 {
            action.corner_left
        } else {
            action.corner_right
        };
        mouth_v + corner * p * p
    };
    let gap = |p: f32| action.mouth_open * (1.0 - p * p).max(0.0);
    let inner_upper = |p: f32| middle(p) - gap(p) * 0.35;
    let inner_lower = |p: f32| middle(p) + gap(p) * 0.65;
    let outer_upper = |p: f32| {
        inner_upper(p) - lip * (1.0 - 0.5 * p * p) - action.upper_lip_raise * (1.0 - p * p)
    };
    let outer_lower = |p: f32| inner_lower(p) + lip * 1.2 * (1.0 - 0.5 * p * p);
    let m = |p: f32, v: f32| at(p * half_mouth, v);
    for p in [-1.0, -0.6, -0.25, 0.0, 0.25, 0.6, 1.0] {
        points.push(m(
            p,
            if p.abs() == 1.0 {
                middle(p)
            } else {
                outer_upper(p)
            },
        ));
    }
    for p in [0.6, 0.25, 0.0, -0.25, -0.6] {
        points.push(m(p, outer_lower(p)));
    }
    points.push(m(-0.85, middle(-0.85)));
    for p in [-0.4, 0.0, 0.4] {
        points.push(m(p, inner_upper(p)));
    }
    points.push(m(0.85, middle(0.85)));
    for p in [0.4, 0.0, -0.4] {
        points.push(m(p, inner_lower(p)));
    }
    debug_assert_eq!(points.len(), 68);
    points
}

/// Draws the face whose landmarks are `points` on a canvas filled with the subject's
/// background, lighting and hair.
pub(crate) fn draw(
    canvas: &mut Canvas,
    subject: &Subject,
    action: &Action,
    points: &[[f32; 2]],
    offset: [f32; 2],
) {
    let [cx, cy] = [subject.centre[0] + offset[0], subject.centre[1] + offset[1]];
    let (a, b) = (subject.half_width, subject.half_height);
    let at = |u: f32, v: f32| [cx + u * a, cy + v * b];
    let skin = subject.skin;
    let dark = |factor: f32| skin * factor;

    // Hair behind the head, the head itself, then hair over the forehead down to the hairline.
    canvas.fill_ellipse(at(0.0, -0.15), [a * 1.12, b * 1.02], subject.hair);
    canvas.fill_ellipse(at(-1.0, -0.12), [a * 0.1, b * 0.18], dark(0.9)); // Ears.
    canvas.fill_ellipse(at(1.0, -0.12), [a * 0.1, b * 0.18], dark(0.9));
    let mut face_outline: Vec<[f32; 2]> = points[0..17].to_vec();
    for i in 0..=12 {
        // The upper half of the head: an arc from the right ear over the top to the left ear.
        let angle = std::f32::consts::PI * i as f32 / 12.0;
        face_outline.push(at(0.96 * angle.cos(), -0.08 - 0.95 * angle.sin()));
    }
    canvas.fill_polygon(&face_outline, skin);
    canvas.fill_ellipse(
        at(0.0, -1.0),
        [a * 0.95, b * (1.0 - subject.hairline)],
        subject.hair,
    );

    // Soft shading: eye sockets and cheeks.
    for side in [-1.0, 1.0] {
        canvas.shade_ellipse(
            at(side * subject.eye_spacing, -0.22),
            [a * 0.3, b * 0.16],
            0.85,
        );
        canvas.shade_ellipse(at(side * 0.5, 0.3), [a * 0.25, b * 0.2], 1.05);
    }
    // Nose: a shadow along the bridge and nostrils.
    canvas.stroke(&points[27..31], 3.0, dark(0.85));
    canvas.stroke(&points[31..36], 4.0, dark(0.6));

    // Eyes: sclera, iris clipped to the opening, upper lid line.
    for eye in [&points[36..42], &points[42..48]] {
        canvas.fill_polygon(eye, 228.0);
        let centre = [
            (eye[0][0] + eye[3][0]) / 2.0,
            (eye[1][1] + eye[2][1] + eye[4][1] + eye[5][1]) / 4.0,
        ];
        let opening = ((eye[4][1] + eye[5][1]) - (eye[1][1] + eye[2][1])) / 2.0;
        let iris_radius = 0.055 * a;
        canvas.fill_ellipse(centre, [iris_radius, iris_radius.min(opening * 0.5)], 35.0);
        let upper = [eye[0], eye[1], eye[2], eye[3]];
        canvas.stroke(&upper, 3.5, 25.0);
    }
    // Brows.
    canvas.stroke(
        &points[17..22],
        subject.brow_thickness,
        subject.hair.min(60.0),
    );
    canvas.stroke(
        &points[22..27],
        subject.brow_thickness,
        subject.hair.min(60.0),
    );

    // Mouth: lips, then the opening (dark), then teeth in the opening's upper part.
    let outer: Vec<[f32; 2]> = points[48..60].to_vec();
    canvas.fill_polygon(&outer, dark(0.62));
    let inner: Vec<[f32; 2]> = points[60..68].to_vec();
    let inner_height = (points[66][1] - points[62][1]).max(0.0);
    if inner_height > 1.5 {
        let mut inner_with_corners = vec![points[48]];
        inner_with_corners.extend_from_slice(&inner[1..4]);
        inner_with_corners.push(points[54]);
        inner_with_corners.extend_from_slice(&inner[5..8]);
        canvas.fill_polygon(&inner_with_corners, 22.0);
        if action.teeth > 0.05 {
            let teeth_height = inner_height * 0.45 * action.teeth.min(1.0);
            let band: Vec<[f32; 2]> = vec![
                [points[61][0], points[61][1]],
                [points[62][0], points[62][1]],
                [points[63][0], points[63][1]],
                [points[63][0], points[63][1] + teeth_height],
                [points[62][0], points[62][1] + teeth_height],
                [points[61][0], points[61][1] + teeth_height],
            ];
            canvas.fill_polygon(&band, 235.0);
        }
    } else {
        canvas.stroke(&[points[48], points[62], points[54]], 2.5, dark(0.35));
    }

    // Wrinkles, drawn with their intensity as darkness.
    let line = |strength: f32| skin * (1.0 - 0.45 * strength.min(1.0));
    if action.glabella_lines > 0.05 {
        for side in [-0.05, 0.05] {
            canvas.stroke(
                &[at(side, -0.42), at(side * 1.3, -0.28)],
                3.0,
                line(action.glabella_lines),
            );
        }
    }
    if action.forehead_lines > 0.05 {
        for row in 0..3 {
            let v = -0.55 - 0.06 * row as f32;
            let wave: Vec<[f32; 2]> = (0..7)
                .map(|k| {
                    let u = -0.45 + 0.15 * k as f32;
                    at(u, v - 0.015 * (1.0 - (u / 0.45).powi(2)))
                })
                .collect();
            canvas.stroke(&wave, 3.0, line(action.forehead_lines));
        }
    }
    if action.nose_wrinkles > 0.05 {
        for row in 0..3 {
            let v = -0.12 + 0.05 * row as f32;
            canvas.stroke(
                &[at(-0.1, v), at(0.0, v - 0.02), at(0.1, v)],
                3.0,
                line(action.nose_wrinkles),
            );
        }
    }
    if action.smile_folds > 0.05 {
        let strength = line(action.smile_folds);
        canvas.stroke(&[at(-0.2, 0.15), at(-0.3, 0.35), points[48]], 4.0, strength);
        canvas.stroke(&[at(0.2, 0.15), at(0.3, 0.35), points[54]], 4.0, strength);
        for side in [-1.0_f32, 1.0] {
            let corner = at(side * (subject.eye_spacing + 0.2), -0.2);
            for k in [-1.0_f32, 0.0, 1.0] {
                let end = [corner[0] + side * 0.09 * a, corner[1] + k * 0.05 * b];
                canvas.stroke(&[corner, end], 2.5, strength);
            }
        }
    }
}
