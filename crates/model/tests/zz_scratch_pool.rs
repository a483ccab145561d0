use candle_core::{Device, Tensor};
use dexpression_model::ops::{max_pool2d, Pool2d};
#[test]
fn scratch_pool_timing() {
    let x = Tensor::rand(-1f32, 1f32, (32, 64, 112, 112), &Device::Cpu).unwrap();
    let pool = Pool2d { kernel: 3, stride: 2, padding: 0 };
    for _ in 0..3 {
        let t = std::time::Instant::now();
        let y = max_pool2d(&x, pool).unwrap();
        println!("pool fwd {:?} {:?}", t.elapsed(), y.dims());
    }
    for _ in 0..3 {
    let t = std::time::Instant::now();
    let y = (x.clone() + 1.0).unwrap();
    println!("affine {:?} {:?}", t.elapsed(), y.dims());
    }
    let mut v = vec![0f32; 32*64*112*112];
    for _ in 0..3 {
    let t = std::time::Instant::now();
    for a in v.iter_mut() { *a += 1.0; }
    println!("inplace {:?} {}", t.elapsed(), v[5]);
    }
    for _ in 0..3 {
    let t = std::time::Instant::now();
    let w = vec![1f32; 32*64*112*112];
    println!("alloc+fill {:?} {}", t.elapsed(), w[7]);
    }
}
