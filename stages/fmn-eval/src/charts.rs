//! Bar charts of the accuracies before/after per concept, as SVG (plotters).
use crate::metrics::{BeforeAfter, ConceptMetrics};
use anyhow::Result;
use plotters::prelude::*;

const BEFORE: RGBColor = RGBColor(90, 130, 200);
const AFTER: RGBColor = RGBColor(220, 110, 60);

/// Acc_e, Acc_g and Acc_s before (blue) and after (orange) for one concept.
pub fn accuracy_chart(m: &ConceptMetrics) -> Result<String> {
    let bars: Vec<(&str, Option<BeforeAfter>)> =
        vec![("Acc_e", m.acc_e), ("Acc_g", m.acc_g), ("Acc_s", m.acc_s)];
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (420, 260)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(
                format!("{}: accuracy before / after", m.concept),
                ("sans-serif", 16),
            )
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(40)
            // A segmented 0..2 holds the three segments 0, 1, 2.
            .build_cartesian_2d((0u32..2u32).into_segmented(), 0f64..1.3f64)
            .map_err(err)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_label_formatter(&|x| match x {
                SegmentValue::CenterOf(i) => bars
                    .get(*i as usize)
                    .map_or(String::new(), |b| b.0.to_string()),
                _ => String::new(),
            })
            .y_desc("accuracy")
            .draw()
            .map_err(err)?;
        for (i, (_, v)) in bars.iter().enumerate() {
            let Some(v) = v else { continue };
            let i = i as u32;
            let mut before = Rectangle::new(
                [
                    (SegmentValue::Exact(i), 0.0),
                    (SegmentValue::CenterOf(i), v.before),
                ],
                BEFORE.filled(),
            );
            before.set_margin(0, 0, 12, 0);
            let mut after = Rectangle::new(
                [
                    (SegmentValue::CenterOf(i), 0.0),
                    (SegmentValue::Exact(i + 1), v.after),
                ],
                AFTER.filled(),
            );
            after.set_margin(0, 0, 0, 12);
            chart.draw_series([before, after]).map_err(err)?;
        }
        for (label, colour) in [("before", BEFORE), ("after", AFTER)] {
            chart
                .draw_series(std::iter::empty::<Rectangle<(SegmentValue<u32>, f64)>>())
                .map_err(err)?
                .label(label)
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 10, y + 5)], colour.filled())
                });
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .position(SeriesLabelPosition::UpperRight)
            .draw()
            .map_err(err)?;
        root.present().map_err(err)?;
    }
    Ok(svg)
}

fn err<E: std::fmt::Display>(e: E) -> anyhow::Error {
    anyhow::anyhow!("cannot draw the chart: {e}")
}
