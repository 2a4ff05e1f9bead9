//! The stage DAG: nodes in declaration order, edges from `needs`.

use std::collections::BTreeSet;

/// A directed acyclic graph of named nodes; `deps[i]` are the nodes `i` needs.
#[derive(Debug, Clone, Default)]
pub struct Dag {
    pub names: Vec<String>,
    pub deps: Vec<Vec<usize>>,
}

impl Dag {
    pub fn new(names: Vec<String>, deps: Vec<Vec<usize>>) -> Dag {
        assert_eq!(names.len(), deps.len());
        Dag { names, deps }
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    pub fn index(&self, name: &str) -> Option<usize> {
        self.names.iter().position(|n| n == name)
    }

    /// Nodes that need `i`.
    pub fn dependents(&self, i: usize) -> Vec<usize> {
        (0..self.len())
            .filter(|&j| self.deps[j].contains(&i))
            .collect()
    }

    /// A cycle as a list of node indices whose last node needs the first, if there is one.
    pub fn find_cycle(&self) -> Option<Vec<usize>> {
        // 0 = unvisited, 1 = on the stack, 2 = done
        let mut state = vec![0u8; self.len()];
        let mut stack = Vec::new();
        fn visit(
            d: &Dag,
            i: usize,
            state: &mut [u8],
            stack: &mut Vec<usize>,
        ) -> Option<Vec<usize>> {
            state[i] = 1;
            stack.push(i);
            for &j in &d.deps[i] {
                if state[j] == 1 {
                    let start = stack.iter().position(|&k| k == j).unwrap();
                    return Some(stack[start..].to_vec());
                }
                if state[j] == 0 {
                    if let Some(c) = visit(d, j, state, stack) {
                        return Some(c);
                    }
                }
            }
            stack.pop();
            state[i] = 2;
            None
        }
        for i in 0..self.len() {
            if state[i] == 0 {
                if let Some(mut c) = visit(self, i, &mut state, &mut stack) {
                    // The stack runs from a node to what it needs; print it in execution order.
                    c.reverse();
                    return Some(c);
                }
            }
        }
        None
    }

    /// A topological order; among ready nodes, declaration order first. `None` on a cycle.
    pub fn topo_order(&self) -> Option<Vec<usize>> {
        let mut indeg: Vec<usize> = self.deps.iter().map(|d| d.len()).collect();
        let mut ready: BTreeSet<usize> = (0..self.len()).filter(|&i| indeg[i] == 0).collect();
        let mut out = Vec::with_capacity(self.len());
        while let Some(i) = ready.pop_first() {
            out.push(i);
            for j in self.dependents(i) {
                indeg[j] -= 1;
                if indeg[j] == 0 {
                    ready.insert(j);
                }
            }
        }
        (out.len() == self.len()).then_some(out)
    }

    /// Every node `i` depends on, directly or not.
    pub fn ancestors(&self, i: usize) -> BTreeSet<usize> {
        let mut seen = BTreeSet::new();
        let mut todo = self.deps[i].clone();
        while let Some(j) = todo.pop() {
            if seen.insert(j) {
                todo.extend(self.deps[j].iter().copied());
            }
        }
        seen
    }

    /// Every node that depends on `i`, directly or not.
    pub fn descendants(&self, i: usize) -> BTreeSet<usize> {
        let mut seen = BTreeSet::new();
        let mut todo = self.dependents(i);
        while let Some(j) = todo.pop() {
            if seen.insert(j) {
                todo.extend(self.dependents(j));
            }
        }
        seen
    }

    /// The graph in Mermaid flowchart syntax.
    pub fn mermaid(&self, label: impl Fn(usize) -> String) -> String {
        let mut s = String::from("flowchart LR\n");
        for i in 0..self.len() {
            s.push_str(&format!("    {}[\"{}\"]\n", self.names[i], label(i)));
        }
        for i in 0..self.len() {
            for &d in &self.deps[i] {
                s.push_str(&format!("    {} --> {}\n", self.names[d], self.names[i]));
            }
        }
        s
    }

    /// The graph in Graphviz dot syntax.
    pub fn dot(&self, title: &str, label: impl Fn(usize) -> String) -> String {
        let mut s = format!("digraph \"{title}\" {{\n    rankdir=LR;\n    node [shape=box];\n");
        for i in 0..self.len() {
            s.push_str(&format!(
                "    \"{}\" [label=\"{}\"];\n",
                self.names[i],
                label(i)
            ));
        }
        for i in 0..self.len() {
            for &d in &self.deps[i] {
                s.push_str(&format!(
                    "    \"{}\" -> \"{}\";\n",
                    self.names[d], self.names[i]
                ));
            }
        }
        s.push_str("}\n");
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dag(edges: &[(&str, &[&str])]) -> Dag {
        let names: Vec<String> = edges.iter().map(|(n, _)| n.to_string()).collect();
        let deps = edges
            .iter()
            .map(|(_, ds)| {
                ds.iter()
                    .map(|d| names.iter().position(|n| n == d).unwrap())
                    .collect()
            })
            .collect();
        Dag::new(names, deps)
    }

    fn names(d: &Dag, v: &[usize]) -> Vec<String> {
        v.iter().map(|&i| d.names[i].clone()).collect()
    }

    #[test]
    fn topo_order_keeps_declaration_order_among_ready_nodes() {
        let d = dag(&[("b", &["a"]), ("a", &[]), ("c", &["a"]), ("d", &["b", "c"])]);
        assert_eq!(names(&d, &d.topo_order().unwrap()), ["a", "b", "c", "d"]);
        assert!(d.find_cycle().is_none());
    }

    #[test]
    fn cycle_is_found_and_named_in_order() {
        let d = dag(&[("a", &[]), ("b", &["a", "d"]), ("c", &["b"]), ("d", &["c"])]);
        assert!(d.topo_order().is_none());
        let c = names(&d, &d.find_cycle().unwrap());
        assert_eq!(c.len(), 3);
        // Each node of the cycle needs the one before it.
        for w in 0..3 {
            let (x, y) = (&c[w], &c[(w + 1) % 3]);
            let xi = d.index(x).unwrap();
            assert!(
                d.deps[d.index(y).unwrap()].contains(&xi),
                "{y} should need {x}"
            );
        }
    }

    #[test]
    fn ancestors_and_descendants() {
        let d = dag(&[("a", &[]), ("b", &["a"]), ("c", &["b"]), ("x", &[])]);
        assert_eq!(d.ancestors(2).into_iter().collect::<Vec<_>>(), [0, 1]);
        assert_eq!(d.descendants(0).into_iter().collect::<Vec<_>>(), [1, 2]);
        assert!(d.descendants(3).is_empty());
    }

    #[test]
    fn self_loop_is_a_cycle() {
        let d = dag(&[("a", &["a"])]);
        assert_eq!(names(&d, &d.find_cycle().unwrap()), ["a"]);
    }
}
