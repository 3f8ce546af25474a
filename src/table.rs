//! Plain-text tables for the commands' output.

use std::io::Write;

use anyhow::Result;

/// Prints `rows` under `header`, every column but the last padded to its
/// widest cell.
pub fn print_table<const N: usize>(out: &mut impl Write, header: &[String; N], rows: &[[String; N]]) -> Result<()> {
    let mut widths = [0usize; N];
    for r in std::iter::once(header).chain(rows) {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    for r in std::iter::once(header).chain(rows) {
        let mut line = String::new();
        for (i, c) in r.iter().enumerate() {
            if i + 1 == N {
                line.push_str(c);
            } else {
                line.push_str(c);
                line.extend(std::iter::repeat_n(' ', widths[i] - c.chars().count() + 2));
            }
        }
        writeln!(out, "{}", line.trim_end())?;
    }
    Ok(())
}
