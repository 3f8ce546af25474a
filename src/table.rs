//! Plain-text tables for the commands' output.

use std::io::Write;

use anyhow::Result;

/// Prints `rows` under `header`, every column but the last padded to its
/// widest cell.
pub fn print_table<const N: usize>(out: &mut impl Write, header: &[String; N], rows: &[[String; N]]) -> Result<()> {
    let mut widths = Widths::of(header);
    for r in rows {
        widths.fit(r);
    }
    widths.print(out, header)?;
    for r in rows {
        widths.print(out, r)?;
    }
    Ok(())
}

/// The widths of a table's columns, grown row by row: a table too long to
/// hold is measured in one pass over its rows and printed in a second.
pub struct Widths<const N: usize>([usize; N]);

impl<const N: usize> Widths<N> {
    /// The widths of `header` alone.
    pub fn of(header: &[String; N]) -> Self {
        let mut w = Widths([0; N]);
        w.fit(header);
        w
    }

    /// Widens the columns to fit `row`.
    pub fn fit(&mut self, row: &[String; N]) {
        for (w, c) in self.0.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }

    /// Prints `row`, every column but the last padded to its width.
    pub fn print(&self, out: &mut impl Write, row: &[String; N]) -> Result<()> {
        let mut line = String::new();
        for (i, c) in row.iter().enumerate() {
            line.push_str(c);
            if i + 1 < N {
                let pad = self.0[i].saturating_sub(c.chars().count()) + 2;
                line.extend(std::iter::repeat_n(' ', pad));
            }
        }
        writeln!(out, "{}", line.trim_end())?;
        Ok(())
    }
}
