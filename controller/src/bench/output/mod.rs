//! What a run writes into its output directory: [`json`] (every sample), [`plots`] (SVG and
//! PNG) and [`markdown`] (the summary tables).
pub mod json;
pub mod markdown;
pub mod plots;
