//! `cargo bench --bench testbed` (root): time bringing up and tearing down a
//! 10-host testbed, and pushing the test images. Target from issue 3: up in
//! < 30 s; teardown leaves no namespace, veth, process or mount.

use std::time::Instant;

use berth_testbed::{self as testbed, images};

fn main() {
    let lock = testbed::lock_free_slot().expect("slot");
    let slot = lock.slot;
    let mut ups = Vec::new();
    let mut downs = Vec::new();
    for round in 0..3 {
        let t = Instant::now();
        let tb = testbed::up(slot, 10).unwrap_or_else(|e| panic!("up: {e}"));
        let up = t.elapsed();
        assert!(tb.is_healthy());
        if round == 0 {
            let t = Instant::now();
            let pushed =
                images::push(&tb, &images::ImageSet { proxy_binary: None }).expect("images");
            println!(
                "images: {} built and pushed in {:.2} s",
                pushed.len(),
                t.elapsed().as_secs_f64()
            );
        }
        let t = Instant::now();
        testbed::down(slot).expect("down");
        let down = t.elapsed();
        let left = testbed::leftovers(slot);
        assert!(left.is_empty(), "left behind: {left:?}");
        ups.push(up.as_secs_f64());
        downs.push(down.as_secs_f64());
    }
    let max = |v: &[f64]| v.iter().cloned().fold(0.0, f64::max);
    println!(
        "testbed 10 hosts: up {:.2} s (worst of 3; target < 30 s), down {:.2} s (worst of 3), nothing left behind",
        max(&ups),
        max(&downs)
    );
}
