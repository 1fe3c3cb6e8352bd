//! Where an image lies in the model input ([`Geometry`]), and the maps that bring a model's
//! answer (a point, a length) back to the image's pixels ([`AxisMap`]).

/// Where the image lies in the model input, to bring the model's answer back to the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// The whole input is the whole image.
    Stretch,
    /// The image fills the input rectangle `(x, y, w, h)`; the rest is padding.
    Letterbox { x: u32, y: u32, w: u32, h: u32 },
    /// The input shows the image's rectangle `(x, y, w, h)`, scaled to the input size. With
    /// `resize: crop` it lies inside the image (the rest of the image is outside); with
    /// `resize: pad_square` it is the square `(0, 0, m, m)`, `m` the longer side, and reaches
    /// past the image's right or bottom edge (that part is `pad`).
    Crop { x: u32, y: u32, w: u32, h: u32 },
}

/// An image's size and its place in the model input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    pub width: u32,
    pub height: u32,
    pub placement: Placement,
}

/// One axis from model-input pixels to image pixels:
/// `image = (input − input_offset) · numerator / denominator + image_offset`, in f32, in that
/// order, so that a detector decoded as its reference code does it (NudeNet:
/// `x · padded_size / 320`) gives the same bits.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AxisMap {
    pub input_offset: f32,
    pub numerator: f32,
    pub denominator: f32,
    pub image_offset: f32,
}

impl AxisMap {
    /// A coordinate.
    pub fn point(&self, v: f32) -> f32 {
        (v - self.input_offset) * self.numerator / self.denominator + self.image_offset
    }

    /// A length (no offsets).
    pub fn length(&self, v: f32) -> f32 {
        v * self.numerator / self.denominator
    }
}

impl Geometry {
    /// The maps of the x and y axes for a model input of `size` (`[width, height]`).
    pub fn axis_maps(&self, size: [u32; 2]) -> [AxisMap; 2] {
        let [mw, mh] = size;
        let map =
            |input_offset: u32, numerator: u32, denominator: u32, image_offset: u32| AxisMap {
                input_offset: input_offset as f32,
                numerator: numerator as f32,
                denominator: denominator.max(1) as f32,
                image_offset: image_offset as f32,
            };
        match self.placement {
            Placement::Stretch => [map(0, self.width, mw, 0), map(0, self.height, mh, 0)],
            Placement::Letterbox { x, y, w, h } => {
                [map(x, self.width, w, 0), map(y, self.height, h, 0)]
            }
            Placement::Crop { x, y, w, h } => [map(0, w, mw, x), map(0, h, mh, y)],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn geometry(width: u32, height: u32, placement: Placement) -> Geometry {
        Geometry {
            width,
            height,
            placement,
        }
    }

    #[test]
    fn maps_bring_input_pixels_back_to_the_image() {
        // 200 × 100 stretched to 50 × 50: x · 4, y · 2.
        let [mx, my] = geometry(200, 100, Placement::Stretch).axis_maps([50, 50]);
        assert_eq!((mx.point(10.0), my.point(10.0)), (40.0, 20.0));
        assert_eq!(mx.length(5.0), 20.0);
        // Letterboxed into (0, 25, 100, 50) of 100 × 100: x · 2, (y − 25) · 2.
        let g = geometry(
            200,
            100,
            Placement::Letterbox {
                x: 0,
                y: 25,
                w: 100,
                h: 50,
            },
        );
        let [mx, my] = g.axis_maps([100, 100]);
        assert_eq!(
            (mx.point(50.0), my.point(25.0), my.length(10.0)),
            (100.0, 0.0, 20.0)
        );
        // Padded to the 400 × 400 square (0, 0, 400, 400) and fed at 320: · 400 / 320.
        let g = geometry(
            256,
            400,
            Placement::Crop {
                x: 0,
                y: 0,
                w: 400,
                h: 400,
            },
        );
        let [mx, _] = g.axis_maps([320, 320]);
        let v = 123.456f32;
        assert_eq!(mx.point(v).to_bits(), (v * 400.0 / 320.0).to_bits());
        // A centred crop (50, 0, 100, 100) of 200 × 100 at 10 × 10: x · 10 + 50.
        let g = geometry(
            200,
            100,
            Placement::Crop {
                x: 50,
                y: 0,
                w: 100,
                h: 100,
            },
        );
        assert_eq!(g.axis_maps([10, 10])[0].point(1.0), 60.0);
    }
}
