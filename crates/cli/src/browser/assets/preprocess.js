// The network's input from an image's pixels, computed as the Rust side computes it
// (dexpression_dataset::crop::crop_and_resize, with the image crate 0.25): crop, grayscale with
// the image crate's luma weights, Catmull-Rom resize, then pixel / 255.
//
// The browser's own resampling (canvas drawImage) is not the image crate's filter, so both steps
// are written out here. Every operation that the Rust code does in f32 is rounded to f32 with
// Math.fround, in the same order, so that the gray pixels come out identical, not just close:
// the in-browser probabilities then match the server's to float precision. Pure functions, no
// DOM, so that the same file runs anywhere.

const f = Math.fround;

// The image crate (0.25.10) converts RGB to gray in f32: each 8-bit value times 1/255, weighted
// by the Y row of BT.709's RGB-to-XYZ matrix (derived by moxcms 0.8, D65), summed in R, G, B
// order without fused multiply-adds (x86-64's default build), times 255, rounded. These are the
// exact f32 weights it derives (bits 0x3e59c05b, 0x3f3715fc, 0x3d93cf75), not the rounded Rec. 709
// constants 0.2126, 0.7152, 0.0722.
export const LUMA_WEIGHTS = [f(0.21264784), f(0.7151792), f(0.07217304)];
const ONE_OVER_255 = f(1 / 255);

// The Catmull-Rom kernel's reach in source pixels at scale 1 (the image crate's `support: 2.0`).
const CATMULL_ROM_SUPPORT = 2;

/**
 * The network's input pixels for a region of an RGBA image: `side * side` gray values, row-major.
 *
 * rgba: the image's pixels as 8-bit RGBA (an ImageData's data); alpha is ignored, as the image
 * crate ignores it when converting to gray. box: {x, y, width, height} in whole pixels, or null
 * for the whole image; it is clipped to the image as the image crate's crop_imm clips it.
 */
export function faceInput(rgba, width, height, box, side) {
  const region = clipBox(box, width, height);
  const gray = grayRegion(rgba, width, region);
  if (region.width === side && region.height === side) return gray;
  return resizeCatmullRom(gray, region.width, region.height, side, side);
}

/** Float32 input values (`pixel / divideBy`, in [0, 1] for 255) of gray pixels. */
export function inputValues(gray, divideBy) {
  const values = new Float32Array(gray.length);
  const divisor = f(divideBy);
  // A Float32Array store rounds the f64 quotient to f32: the same value as an f32 division.
  for (let i = 0; i < gray.length; i++) values[i] = gray[i] / divisor;
  return values;
}

/** The image crate's gray value of one 8-bit RGB pixel (what DynamicImage::to_luma8 gives). */
export function luma(r, g, b) {
  let sum = f(0 + f(f(r * ONE_OVER_255) * LUMA_WEIGHTS[0]));
  sum = f(sum + f(f(g * ONE_OVER_255) * LUMA_WEIGHTS[1]));
  sum = f(sum + f(f(b * ONE_OVER_255) * LUMA_WEIGHTS[2]));
  // Rust's f32::round rounds halves away from zero; the value is never negative here, where
  // Math.round agrees. The cast to u8 saturates.
  return Math.min(255, Math.max(0, Math.round(f(sum * 255))));
}

/** The box clipped to the image, as the image crate's crop_imm does; the whole image for null. */
export function clipBox(box, width, height) {
  if (!box) return { x: 0, y: 0, width, height };
  const x = Math.min(Math.max(0, Math.floor(box.x)), width);
  const y = Math.min(Math.max(0, Math.floor(box.y)), height);
  return {
    x,
    y,
    width: Math.min(Math.max(0, Math.floor(box.width)), width - x),
    height: Math.min(Math.max(0, Math.floor(box.height)), height - y),
  };
}

function grayRegion(rgba, width, region) {
  const gray = new Uint8Array(region.width * region.height);
  for (let row = 0; row < region.height; row++) {
    let source = 4 * ((region.y + row) * width + region.x);
    let target = row * region.width;
    for (let column = 0; column < region.width; column++, source += 4, target++) {
      gray[target] = luma(rgba[source], rgba[source + 1], rgba[source + 2]);
    }
  }
  return gray;
}

/**
 * The image crate's resize with FilterType::CatmullRom (imageops::resize) of one 8-bit channel:
 * first the columns to the new height into f32, then the rows to the new width, rounded and
 * clamped to 8 bits. When shrinking, the kernel is widened by the scale factor, so every source
 * pixel counts (no aliasing).
 */
export function resizeCatmullRom(gray, width, height, newWidth, newHeight) {
  if (width === 0 || height === 0) return new Uint8Array(newWidth * newHeight);
  if (width === newWidth && height === newHeight) return Uint8Array.from(gray);
  // Columns: width x newHeight, f32, unrounded.
  const columns = new Float32Array(width * newHeight);
  for (let outY = 0; outY < newHeight; outY++) {
    const { left, weights } = filterWeights(outY, height, newHeight);
    for (let x = 0; x < width; x++) {
      let sum = 0;
      for (let i = 0; i < weights.length; i++) {
        sum = f(sum + f(gray[(left + i) * width + x] * weights[i]));
      }
      columns[outY * width + x] = sum;
    }
  }
  // Rows: newWidth x newHeight, 8-bit.
  const out = new Uint8Array(newWidth * newHeight);
  for (let outX = 0; outX < newWidth; outX++) {
    const { left, weights } = filterWeights(outX, width, newWidth);
    for (let y = 0; y < newHeight; y++) {
      let sum = 0;
      for (let i = 0; i < weights.length; i++) {
        sum = f(sum + f(columns[y * width + left + i] * weights[i]));
      }
      out[y * newWidth + outX] = Math.round(Math.min(255, Math.max(0, sum)));
    }
  }
  return out;
}

// The source pixels one output pixel reads and their normalised weights, as the image crate's
// vertical_sample and horizontal_sample compute them (in f32).
function filterWeights(outIndex, length, newLength) {
  const ratio = f(length / newLength);
  const scale = ratio < 1 ? 1 : ratio;
  const support = f(CATMULL_ROM_SUPPORT * scale);
  const centre = f(f(outIndex + 0.5) * ratio);
  const left = clamp(Math.floor(f(centre - support)), 0, length - 1);
  const right = clamp(Math.ceil(f(centre + support)), left + 1, length);
  // The kernel puts a pixel's centre at 0.
  const origin = f(centre - 0.5);
  const weights = [];
  let total = 0;
  for (let i = left; i < right; i++) {
    const weight = catmullRom(f(f(i - origin) / scale));
    weights.push(weight);
    total = f(total + weight);
  }
  for (let i = 0; i < weights.length; i++) weights[i] = f(weights[i] / total);
  return { left, weights };
}

function clamp(value, min, max) {
  return value < min ? min : value > max ? max : value;
}

// The image crate's bc_cubic_spline with B = 0, C = 0.5, its coefficients folded (they are exact
// in f32) and its powers taken as it takes them (x^3 as x * (x * x)).
function catmullRom(x) {
  const a = Math.abs(x);
  const a2 = f(a * a);
  const a3 = f(a * a2);
  let k;
  if (a < 1) {
    k = f(f(f(9 * a3) + f(-15 * a2)) + 6);
  } else if (a < 2) {
    k = f(f(f(f(-3 * a3) + f(15 * a2)) + f(-24 * a)) + 12);
  } else {
    k = 0;
  }
  return f(k / 6);
}
