//! The page layout every role's pages share (the peer's chat page, the controller's dashboard):
//! the document, its head (charset, viewport, icon, the shared stylesheet and the page's own),
//! and the page's `body`. A pure maud function; every asset is served by the binary itself.

use maud::{html, Markup, DOCTYPE};

/// A whole page titled `title`, styled by the shared stylesheet and `stylesheet`, around `body`
/// (the `body` element itself, with the page's classes and data).
pub fn layout(title: &str, stylesheet: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                meta name="color-scheme" content="light";
                title { (title) }
                link rel="icon" href="/assets/favicon.svg" type="image/svg+xml";
                link rel="stylesheet" href="/assets/style.css";
                link rel="stylesheet" href=(stylesheet);
            }
            (body)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_has_its_title_escaped_and_both_stylesheets() {
        let page = layout(
            "a <b> · x",
            "/assets/chat.css",
            html! { body.chat { "hi" } },
        )
        .into_string();
        assert!(page.starts_with("<!DOCTYPE html><html lang=\"en\"><head>"));
        assert!(page.contains("<title>a &lt;b&gt; · x</title>"));
        assert!(page.contains("href=\"/assets/style.css\""));
        assert!(page.contains("href=\"/assets/chat.css\""));
        assert!(page.ends_with("<body class=\"chat\">hi</body></html>"));
    }
}
