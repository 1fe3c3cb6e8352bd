//! Non-maximum suppression, two ways: fmn's greedy NMS on corner boxes in f32 (`nms: greedy`)
//! and OpenCV's `cv::dnn::NMSBoxes` on `Rect2d` boxes (`nms: opencv`), which NudeNet 3.x calls
//! and which differs in the score test (strictly above), the IoU arithmetic (f64, OpenCV's
//! rectangle intersection, a float32 overlap) and the empty-box case. The OpenCV rules are
//! written down in tests/fixtures/gen/NUDENET_3.4.2.md and checked there against OpenCV.
use std::cmp::Ordering;

/// Intersection over union of two `[x0, y0, x1, y1]` boxes (0 when both are empty).
pub fn iou(a: &[f32; 4], b: &[f32; 4]) -> f32 {
    let area = |r: &[f32; 4]| (r[2] - r[0]).max(0.0) * (r[3] - r[1]).max(0.0);
    let iw = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let ih = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let inter = iw * ih;
    let union = area(a) + area(b) - inter;
    if union > 0.0 {
        inter / union
    } else {
        0.0
    }
}

/// Greedy non-maximum suppression: going from the best score down, keeps a box unless it
/// overlaps an already kept one by IoU > `iou_threshold`. Returns the kept indices, best
/// first (ties keep index order).
pub fn nms(boxes: &[[f32; 4]], scores: &[f32], iou_threshold: f32) -> Vec<usize> {
    let n = boxes.len().min(scores.len());
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&i, &j| scores[j].total_cmp(&scores[i]));
    greedy(order, |k, i| iou(&boxes[k], &boxes[i]) <= iou_threshold)
}

/// The greedy walk of every NMS here: goes through `order` (best first) and keeps an index
/// when `fits(kept, index)` holds for every index kept before it. Returns the kept indices in
/// walk order.
pub fn greedy(
    order: impl IntoIterator<Item = usize>,
    fits: impl Fn(usize, usize) -> bool,
) -> Vec<usize> {
    let mut kept: Vec<usize> = Vec::new();
    for i in order {
        if kept.iter().all(|&k| fits(k, i)) {
            kept.push(i);
        }
    }
    kept
}

/// OpenCV's `Rect2d`: `[x, y, width, height]`.
type Rect = [f64; 4];

fn empty(r: &Rect) -> bool {
    r[2] <= 0.0 || r[3] <= 0.0
}

/// OpenCV's `Rect_<double>::operator&=` (core/types.hpp): the intersection's area, computed
/// as OpenCV does (`min(left.width − (right.x − left.x), right.width)`, not
/// `min(x0 + w0, x1 + w1) − max(x0, x1)`, which rounds differently).
fn intersection_area(a: &Rect, b: &Rect) -> f64 {
    if empty(a) || empty(b) {
        return 0.0;
    }
    let (x_min, x_max) = if a[0] < b[0] { (a, b) } else { (b, a) };
    let (y_min, y_max) = if a[1] < b[1] { (a, b) } else { (b, a) };
    if (x_min[0] < 0.0 && x_min[0] + x_min[2] < x_max[0])
        || (y_min[1] < 0.0 && y_min[1] + y_min[3] < y_max[1])
    {
        return 0.0;
    }
    let w = (x_min[2] - (x_max[0] - x_min[0])).min(x_max[2]);
    let h = (y_min[3] - (y_max[1] - y_min[1])).min(y_max[3]);
    if w <= 0.0 || h <= 0.0 {
        0.0
    } else {
        w * h
    }
}

/// OpenCV's `rectOverlap` of two `[x, y, w, h]` boxes: `1 − (float)jaccardDistance(a, b)`,
/// the IoU in f64 without the `+ 1` of pixel-inclusive boxes, rounded through f32. Two empty
/// boxes overlap fully (1), wherever they are.
pub fn opencv_overlap(a: &[f32; 4], b: &[f32; 4]) -> f32 {
    let a: Rect = a.map(f64::from);
    let b: Rect = b.map(f64::from);
    let (area_a, area_b) = (a[2] * a[3], b[2] * b[3]);
    let distance = if area_a + area_b <= f64::EPSILON {
        0.0
    } else {
        let inter = intersection_area(&a, &b);
        1.0 - inter / (area_a + area_b - inter)
    };
    1.0 - distance as f32
}

/// `cv::dnn::NMSBoxes(boxes, scores, score_threshold, iou_threshold)` with `eta = 1` and no
/// `top_k`, boxes `[x, y, w, h]`: the boxes scoring strictly above `score_threshold`, in
/// descending score order (a stable sort: ties keep index order); each is kept when its
/// overlap with every box kept so far is ≤ `iou_threshold`. Returns the kept indices, in that
/// order. Class-agnostic.
pub fn nms_opencv(
    boxes: &[[f32; 4]],
    scores: &[f32],
    score_threshold: f32,
    iou_threshold: f32,
) -> Vec<usize> {
    let n = boxes.len().min(scores.len());
    let mut order: Vec<usize> = (0..n).filter(|&i| scores[i] > score_threshold).collect();
    // No NaN passed the test above, so this is a total order; sort_by is stable.
    order.sort_by(|&i, &j| scores[j].partial_cmp(&scores[i]).unwrap_or(Ordering::Equal));
    greedy(order, |k, i| {
        opencv_overlap(&boxes[i], &boxes[k]) <= iou_threshold
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The cases NUDENET_3.4.2.md checked against cv2.dnn.NMSBoxes: with `[0, 0, 10, 10]`
    /// kept first, `[3.9, 0, 10, 10]` (IoU 61/139 = 0.439 in f64) is kept and
    /// `[3.7, 0, 10, 10]` (IoU 63/137 = 0.460) suppressed — only unrounded f64 boxes give both.
    #[test]
    fn boxes_are_not_rounded_to_pixels() {
        let a = [0.0, 0.0, 10.0, 10.0];
        assert_eq!(
            nms_opencv(&[a, [3.9, 0.0, 10.0, 10.0]], &[0.9, 0.8], 0.25, 0.45),
            vec![0, 1]
        );
        assert_eq!(
            nms_opencv(&[a, [3.7, 0.0, 10.0, 10.0]], &[0.9, 0.8], 0.25, 0.45),
            vec![0]
        );
        let o = opencv_overlap(&a, &[3.9, 0.0, 10.0, 10.0]);
        assert!((f64::from(o) - 61.0 / 139.0).abs() < 1e-6, "{o}");
        let o = opencv_overlap(&a, &[3.7, 0.0, 10.0, 10.0]);
        assert!((f64::from(o) - 63.0 / 137.0).abs() < 1e-6, "{o}");
    }

    /// Scores must be strictly above the threshold; an overlap equal to the threshold keeps the
    /// box; equal scores keep index order; no `+ 1` on sizes.
    #[test]
    fn thresholds_and_ties() {
        let a = [0.0, 0.0, 10.0, 10.0];
        assert_eq!(nms_opencv(&[a], &[0.25], 0.25, 0.45), Vec::<usize>::new());
        assert_eq!(nms_opencv(&[a], &[0.250_001], 0.25, 0.45), vec![0]);
        // [0, 0, 10, 20] and [0, 0, 10, 10]: IoU 100 / 200 = 0.5 exactly.
        let b = [0.0, 0.0, 10.0, 20.0];
        assert_eq!(opencv_overlap(&a, &b), 0.5);
        assert_eq!(nms_opencv(&[a, b], &[0.5, 0.5], 0.25, 0.5), vec![0, 1]);
        assert_eq!(nms_opencv(&[b, a], &[0.5, 0.5], 0.25, 0.49), vec![0]);
        assert_eq!(nms_opencv(&[a, b], &[0.3, 0.6], 0.25, 0.49), vec![1]);
        // Apart, and touching edges: no overlap.
        assert_eq!(opencv_overlap(&a, &[10.0, 0.0, 5.0, 5.0]), 0.0);
        assert!(nms_opencv(&[], &[], 0.25, 0.45).is_empty());
    }

    /// A zero-area box overlaps any other zero-area box fully (OpenCV's jaccardDistance
    /// returns 0 when both areas are 0), and a non-empty box not at all.
    #[test]
    fn empty_boxes_suppress_each_other_wherever_they_are() {
        let e1 = [5.0, 5.0, 0.0, 3.0];
        let e2 = [100.0, 100.0, 4.0, 0.0];
        assert_eq!(opencv_overlap(&e1, &e2), 1.0);
        assert_eq!(nms_opencv(&[e1, e2], &[0.9, 0.8], 0.25, 0.45), vec![0]);
        let a = [0.0, 0.0, 10.0, 10.0];
        assert_eq!(opencv_overlap(&e1, &a), 0.0);
        assert_eq!(nms_opencv(&[a, e1], &[0.9, 0.8], 0.25, 0.45), vec![0, 1]);
    }
}
