//! Plain-text tables for human output: left-aligned columns, two spaces apart, indented.

/// Renders `rows` under `headers`, each line indented by two spaces and ending in a newline,
/// with no trailing spaces. Rows shorter than the header leave the missing cells empty.
pub fn render_table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|header| header.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header_row: Vec<String> = headers.iter().map(|header| header.to_string()).collect();
    for row in std::iter::once(&header_row).chain(rows) {
        let mut line = String::from("  ");
        for (index, width) in widths.iter().enumerate() {
            let cell = row.get(index).map_or("", String::as_str);
            line.push_str(cell);
            let padding = width - cell.chars().count();
            line.extend(std::iter::repeat_n(' ', padding + 2));
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_align_to_the_widest_cell() {
        let rows = vec![vec!["1".to_string(), "leader".to_string()], vec!["10".to_string(), "-".to_string()]];
        assert_eq!(render_table(&["ID", "ROLE"], &rows), "  ID  ROLE\n  1   leader\n  10  -\n");
    }

    #[test]
    fn an_empty_table_is_its_header() {
        assert_eq!(render_table(&["SHARD", "LEADER"], &[]), "  SHARD  LEADER\n");
    }
}
