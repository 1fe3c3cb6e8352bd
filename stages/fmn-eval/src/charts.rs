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
            .build_cartesian_2d(0f64..3f64, 0f64..1.05f64)
            .map_err(err)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(3)
            .x_label_formatter(&|x| {
                let i = (x - 0.5).round() as usize;
                bars.get(i).map_or(String::new(), |b| b.0.to_string())
            })
            .y_desc("accuracy")
            .draw()
            .map_err(err)?;
        for (i, (_, v)) in bars.iter().enumerate() {
            let Some(v) = v else { continue };
            let x = i as f64;
            chart
                .draw_series([
                    Rectangle::new([(x + 0.15, 0.0), (x + 0.5, v.before)], BEFORE.filled()),
                    Rectangle::new([(x + 0.5, 0.0), (x + 0.85, v.after)], AFTER.filled()),
                ])
                .map_err(err)?;
        }
        chart
            .draw_series(std::iter::once(Rectangle::new(
                [(2.2, 1.04), (2.25, 1.0)],
                BEFORE.filled(),
            )))
            .map_err(err)?
            .label("before")
            .legend(|(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], BEFORE.filled()));
        chart
            .draw_series(std::iter::once(Rectangle::new(
                [(2.2, 1.04), (2.25, 1.0)],
                AFTER.filled(),
            )))
            .map_err(err)?
            .label("after")
            .legend(|(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], AFTER.filled()));
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
