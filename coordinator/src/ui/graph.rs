//! The pipeline graph: sources -> bronze -> silver -> gold, laid out by `layout-rs` (rank
//! assignment, crossing reduction and placement as Graphviz's `dot` does) and drawn as SVG
//! here, so that each node can be a link and carry its table's state.

use layout::core::base::Orientation;
use layout::core::format::{ClipHandle, RenderBackend};
use layout::core::geometry::Point;
use layout::core::style::StyleAttr;
use layout::std_shapes::shapes::{Arrow, Element, ShapeKind};
use layout::topo::layout::VisualGraph;
use maud::{Markup, html};

/// How a node looks: its table's state in the latest run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeState {
    /// Committed or up to date, every check passed.
    Ok,
    /// Committed with a check that warned.
    Warned,
    Failed,
    Skipped,
    /// Not finished yet in a run that is still going.
    Running,
    /// Never run, or a source.
    None,
}

impl NodeState {
    pub fn class(self) -> &'static str {
        match self {
            NodeState::Ok => "ok",
            NodeState::Warned => "warned",
            NodeState::Failed => "failed",
            NodeState::Skipped => "skipped",
            NodeState::Running => "running",
            NodeState::None => "none",
        }
    }

    /// Said in words too: colour alone tells nothing to some readers.
    pub fn word(self) -> &'static str {
        match self {
            NodeState::Ok => "ok",
            NodeState::Warned => "check warned",
            NodeState::Failed => "FAILED",
            NodeState::Skipped => "skipped",
            NodeState::Running => "running",
            NodeState::None => "",
        }
    }
}

/// A node of the graph.
#[derive(Debug, Clone)]
pub struct Node {
    /// `source:<name>` or the table (`silver.orders`): the SVG element's id.
    pub id: String,
    pub title: String,
    /// Smaller lines under the title (version and rows, freshness, checks).
    pub lines: Vec<String>,
    pub state: NodeState,
    pub href: Option<String>,
}

const WIDTH: f64 = 240.;
const LINE: f64 = 16.;

/// Lays out `nodes` and `edges` (indexes into `nodes`, from reader to read) left to right
/// and draws them.
pub fn svg(nodes: &[Node], edges: &[(usize, usize)]) -> Markup {
    let mut graph = VisualGraph::new(Orientation::LeftToRight);
    let handles: Vec<_> = nodes
        .iter()
        .enumerate()
        .map(|(i, node)| {
            let height = 30. + LINE * node.lines.len() as f64;
            let element = Element::create_with_properties(
                ShapeKind::new_box(&node.title),
                StyleAttr::simple(),
                Orientation::LeftToRight,
                Point::new(WIDTH, height),
                i.to_string(),
            );
            graph.add_node(element)
        })
        .collect();
    for &(from, to) in edges {
        let edge = format!("{}>{}", nodes[from].id, nodes[to].id);
        graph.add_edge(
            Arrow::simple_with_properties("", edge),
            handles[from],
            handles[to],
        );
    }
    let mut placed = Placed::default();
    graph.do_it(false, false, false, &mut placed);
    let (width, height) = placed.extent();
    html! {
        svg.graph viewBox=(format!("{} {} {width} {height}", placed.min.x, placed.min.y))
            width=(width) height=(height) role="group"
            aria-label=(format!("pipeline graph: {} nodes, {} edges", nodes.len(), edges.len())) {
            defs {
                marker #arrowhead viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7"
                    markerHeight="7" orient="auto-start-reverse" {
                    path d="M 0 0 L 10 5 L 0 10 z" {}
                }
            }
            @for (edge, path) in &placed.arrows {
                path.edge data-edge=(edge) d=(path) marker-end="url(#arrowhead)" {}
            }
            @for (i, (at, size)) in &placed.boxes {
                @let node = &nodes[*i];
                @let body = html! {
                    rect.node x=(at.x) y=(at.y) width=(size.x) height=(size.y) rx="6" {}
                    text.title x=(at.x + 10.) y=(at.y + 20.) { (node.title) }
                    @for (n, line) in node.lines.iter().enumerate() {
                        text.line x=(at.x + 10.) y=(at.y + 20. + LINE * (n as f64 + 1.)) { (line) }
                    }
                };
                g id=(node.id) class=(format!("node {}", node.state.class())) data-state=(node.state.class()) {
                    title { (node.title) @if !node.state.word().is_empty() { ": " (node.state.word()) } }
                    @if let Some(href) = &node.href {
                        a href=(href) { (body) }
                    } @else {
                        (body)
                    }
                }
            }
        }
    }
}

/// What the layout placed: each node's box (by node index) and each edge's path.
struct Placed {
    boxes: Vec<(usize, (Point, Point))>,
    /// `from>to` (node ids) and the SVG path.
    arrows: Vec<(String, String)>,
    min: Point,
    max: Point,
}

impl Default for Placed {
    fn default() -> Self {
        Self {
            boxes: Vec::new(),
            arrows: Vec::new(),
            min: Point::splat(f64::INFINITY),
            max: Point::splat(f64::NEG_INFINITY),
        }
    }
}

impl Placed {
    fn grow(&mut self, p: Point) {
        self.min = Point::new(self.min.x.min(p.x), self.min.y.min(p.y));
        self.max = Point::new(self.max.x.max(p.x), self.max.y.max(p.y));
    }

    fn extent(&mut self) -> (f64, f64) {
        if self.boxes.is_empty() {
            (self.min, self.max) = (Point::zero(), Point::zero());
        }
        let margin = 8.;
        self.min = Point::new(self.min.x - margin, self.min.y - margin);
        (
            self.max.x - self.min.x + margin,
            self.max.y - self.min.y + margin,
        )
    }
}

impl RenderBackend for Placed {
    fn draw_rect(
        &mut self,
        xy: Point,
        size: Point,
        _look: &StyleAttr,
        properties: Option<String>,
        _clip: Option<ClipHandle>,
    ) {
        if let Some(index) = properties.and_then(|p| p.parse().ok()) {
            self.grow(xy);
            self.grow(xy.add(size));
            self.boxes.push((index, (xy, size)));
        }
    }

    fn draw_line(&mut self, _: Point, _: Point, _: &StyleAttr, _: Option<String>) {}

    fn draw_circle(&mut self, _: Point, _: Point, _: &StyleAttr, _: Option<String>) {}

    fn draw_text(&mut self, _: Point, _: &str, _: &StyleAttr) {}

    /// `path` is the exit vector of the first point, then the entry vectors of the others:
    /// one cubic Bézier, then smooth continuations (as layout-rs's own SVG writer draws it).
    fn draw_arrow(
        &mut self,
        path: &[(Point, Point)],
        _dashed: bool,
        _head: (bool, bool),
        _look: &StyleAttr,
        properties: Option<String>,
        _text: &str,
    ) {
        if path.len() < 2 {
            return;
        }
        for (a, b) in path {
            self.grow(*a);
            self.grow(*b);
        }
        let mut d = format!(
            "M {} {} C {} {}, {} {}, {} {}",
            path[0].0.x,
            path[0].0.y,
            path[0].1.x,
            path[0].1.y,
            path[1].0.x,
            path[1].0.y,
            path[1].1.x,
            path[1].1.y
        );
        for (control, to) in &path[2..] {
            d.push_str(&format!(
                " S {} {}, {} {}",
                control.x, control.y, to.x, to.y
            ));
        }
        self.arrows.push((properties.unwrap_or_default(), d));
    }

    fn create_clip(&mut self, _: Point, _: Point, _: usize) -> ClipHandle {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str) -> Node {
        Node {
            id: id.into(),
            title: id.into(),
            lines: vec!["v1".into()],
            state: NodeState::Ok,
            href: Some(format!("/t/{id}")),
        }
    }

    /// Each rank is to the right of the one it reads, and every node and edge is drawn.
    #[test]
    fn lays_out_left_to_right_and_draws_every_node_and_edge() {
        let nodes: Vec<Node> = ["source:a", "bronze.a", "bronze.b", "silver.a", "gold.x"]
            .into_iter()
            .map(node)
            .collect();
        let edges = [(0, 1), (1, 3), (3, 4), (2, 4)];
        let svg = svg(&nodes, &edges).into_string();
        assert_eq!(svg.matches("<path class=\"edge\"").count(), 4, "{svg}");
        assert!(svg.contains("data-edge=\"bronze.b&gt;gold.x\""), "{svg}");
        assert_eq!(svg.matches("<rect class=\"node\"").count(), 5, "{svg}");
        let x = |id: &str| -> f64 {
            let at = svg.find(&format!("id=\"{id}\"")).unwrap();
            let rect = &svg[at..];
            let x = rect
                .split("x=\"")
                .nth(1)
                .unwrap()
                .split('"')
                .next()
                .unwrap();
            x.parse().unwrap()
        };
        assert!(x("source:a") < x("bronze.a"), "{svg}");
        assert!(x("bronze.a") < x("silver.a"));
        assert!(x("silver.a") < x("gold.x"));
        assert!(svg.contains("href=\"/t/gold.x\""));
    }
}
