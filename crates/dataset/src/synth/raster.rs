//! Just enough rasterisation to draw a cartoon face: filled polygons and ellipses, thick
//! polylines, on a floating-point luminance canvas. No anti-aliasing: the faces are shrunk
//! several times before training, which averages the edges.

/// A grayscale canvas, luminance 0..=255 in `f32`, row-major.
pub(crate) struct Canvas {
    pub width: usize,
    pub height: usize,
    pub pixels: Vec<f32>,
}

impl Canvas {
    pub fn new(width: usize, height: usize, value: f32) -> Self {
        Canvas {
            width,
            height,
            pixels: vec![value; width * height],
        }
    }

    /// Fills the pixels whose centres lie inside the ellipse.
    pub fn fill_ellipse(&mut self, centre: [f32; 2], radii: [f32; 2], value: f32) {
        let [cx, cy] = centre;
        let [rx, ry] = [radii[0].max(0.5), radii[1].max(0.5)];
        let y_start = (cy - ry).floor().max(0.0) as usize;
        let y_end = ((cy + ry).ceil() as isize).clamp(0, self.height as isize) as usize;
        for y in y_start..y_end {
            let dy = (y as f32 + 0.5 - cy) / ry;
            let half = 1.0 - dy * dy;
            if half <= 0.0 {
                continue;
            }
            let dx = rx * half.sqrt();
            self.fill_span(y, cx - dx, cx + dx, value);
        }
    }

    /// Fills a polygon (even-odd rule) given by its corners in order.
    pub fn fill_polygon(&mut self, corners: &[[f32; 2]], value: f32) {
        if corners.len() < 3 {
            return;
        }
        let top = corners.iter().map(|p| p[1]).fold(f32::INFINITY, f32::min);
        let bottom = corners
            .iter()
            .map(|p| p[1])
            .fold(f32::NEG_INFINITY, f32::max);
        let y_start = top.floor().max(0.0) as usize;
        let y_end = (bottom.ceil() as isize).clamp(0, self.height as isize) as usize;
        let mut crossings = Vec::with_capacity(8);
        for y in y_start..y_end {
            let scan_y = y as f32 + 0.5;
            crossings.clear();
            for edge_idx in 0..corners.len() {
                let [x0, y0] = corners[edge_idx];
                let [x1, y1] = corners[(edge_idx + 1) % corners.len()];
                if (y0 <= scan_y) != (y1 <= scan_y) {
                    crossings.push(x0 + (scan_y - y0) / (y1 - y0) * (x1 - x0));
                }
            }
            crossings.sort_by(f32::total_cmp);
            for pair in crossings.chunks_exact(2) {
                self.fill_span(y, pair[0], pair[1], value);
            }
        }
    }

    /// Draws a polyline `thickness` pixels wide with round joints.
    pub fn stroke(&mut self, points: &[[f32; 2]], thickness: f32, value: f32) {
        let half = thickness / 2.0;
        for segment in points.windows(2) {
            let [[x0, y0], [x1, y1]] = [segment[0], segment[1]];
            let length = ((x1 - x0).powi(2) + (y1 - y0).powi(2)).sqrt().max(1e-3);
            let (nx, ny) = (-(y1 - y0) / length * half, (x1 - x0) / length * half);
            self.fill_polygon(
                &[
                    [x0 + nx, y0 + ny],
                    [x1 + nx, y1 + ny],
                    [x1 - nx, y1 - ny],
                    [x0 - nx, y0 - ny],
                ],
                value,
            );
        }
        for point in points {
            self.fill_ellipse(*point, [half, half], value);
        }
    }

    /// Multiplies every pixel inside the ellipse by a factor falling off towards its edge:
    /// soft shading (cheeks, shadows) without hard outlines.
    pub fn shade_ellipse(&mut self, centre: [f32; 2], radii: [f32; 2], factor: f32) {
        let [cx, cy] = centre;
        let [rx, ry] = [radii[0].max(0.5), radii[1].max(0.5)];
        let y_start = (cy - ry).floor().max(0.0) as usize;
        let y_end = ((cy + ry).ceil() as isize).clamp(0, self.height as isize) as usize;
        let x_start = (cx - rx).floor().max(0.0) as usize;
        let x_end = ((cx + rx).ceil() as isize).clamp(0, self.width as isize) as usize;
        for y in y_start..y_end {
            let dy = (y as f32 + 0.5 - cy) / ry;
            for x in x_start..x_end {
                let dx = (x as f32 + 0.5 - cx) / rx;
                let distance = dx * dx + dy * dy;
                if distance < 1.0 {
                    let weight = 1.0 - distance;
                    self.pixels[y * self.width + x] *= 1.0 + (factor - 1.0) * weight;
                }
            }
        }
    }

    fn fill_span(&mut self, y: usize, left: f32, right: f32, value: f32) {
        let x_start = (left - 0.5).ceil().max(0.0) as usize;
        let x_end = ((right - 0.5).floor() as isize + 1).clamp(0, self.width as isize) as usize;
        if x_start < x_end {
            let row = &mut self.pixels[y * self.width..(y + 1) * self.width];
            row[x_start..x_end].fill(value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_cover_the_expected_pixels() {
        let mut canvas = Canvas::new(20, 10, 0.0);
        canvas.fill_polygon(&[[2.0, 2.0], [8.0, 2.0], [8.0, 6.0], [2.0, 6.0]], 1.0);
        let covered: f32 = canvas.pixels.iter().sum();
        assert_eq!(covered, 24.0);
        let mut canvas = Canvas::new(20, 20, 0.0);
        canvas.fill_ellipse([10.0, 10.0], [5.0, 5.0], 1.0);
        let area: f32 = canvas.pixels.iter().sum();
        assert!((area - std::f32::consts::PI * 25.0).abs() < 8.0);
        // Off-canvas shapes are clipped, not a panic.
        canvas.fill_ellipse([-50.0, 300.0], [80.0, 80.0], 1.0);
        canvas.stroke(&[[-5.0, -5.0], [30.0, 30.0]], 3.0, 1.0);
    }
}
