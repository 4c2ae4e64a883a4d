//! Dependency cycles among `after` edges.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;

/// Every cycle a depth-first search closes, each as the names along it with the first repeated at the end
/// (`["a", "b", "a"]`). One cycle per back edge, so every loop in the graph shows up at least once.
/// Edges to unknown names are ignored (they are reported as unknown targets).
pub(crate) fn find_cycles(edges: &BTreeMap<String, Vec<String>>) -> Vec<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        OnStack,
        Done,
    }
    let mut marks: BTreeMap<&str, Mark> = edges.keys().map(|k| (k.as_str(), Mark::New)).collect();
    let mut cycles = Vec::new();
    for start in edges.keys() {
        if marks[start.as_str()] != Mark::New {
            continue;
        }
        // An explicit stack of (node, index of the next edge to follow) instead of recursion: configs
        // are small, but a deep chain must not overflow PID 1's stack.
        let mut stack: Vec<(&str, usize)> = vec![(start.as_str(), 0)];
        marks.insert(start.as_str(), Mark::OnStack);
        while let Some(&(node, next)) = stack.last() {
            let Some(target) = edges[node].get(next) else {
                marks.insert(node, Mark::Done);
                stack.pop();
                continue;
            };
            if let Some(top) = stack.last_mut() {
                top.1 += 1;
            }
            match marks.get(target.as_str()).copied() {
                Some(Mark::New) => {
                    marks.insert(target.as_str(), Mark::OnStack);
                    stack.push((target.as_str(), 0));
                }
                Some(Mark::OnStack) => {
                    let from = stack
                        .iter()
                        .position(|(n, _)| *n == target.as_str())
                        .unwrap_or(0);
                    let mut cycle: Vec<String> =
                        stack[from..].iter().map(|(n, _)| n.to_string()).collect();
                    cycle.push(target.clone());
                    cycles.push(cycle);
                }
                Some(Mark::Done) | None => {}
            }
        }
    }
    cycles
}

#[cfg(test)]
mod tests {
    use super::*;

    fn graph(edges: &[(&str, &[&str])]) -> BTreeMap<String, Vec<String>> {
        edges
            .iter()
            .map(|(from, to)| (from.to_string(), to.iter().map(|t| t.to_string()).collect()))
            .collect()
    }

    #[test]
    fn no_cycle_in_a_dag() {
        let g = graph(&[
            ("a", &["b", "c"]),
            ("b", &["c"]),
            ("c", &[]),
            ("d", &["a", "missing"]),
        ]);
        assert!(find_cycles(&g).is_empty());
    }

    #[test]
    fn two_node_cycle() {
        let g = graph(&[("a", &["b"]), ("b", &["a"])]);
        assert_eq!(find_cycles(&g), vec![vec!["a", "b", "a"]]);
    }

    #[test]
    fn self_loop_and_longer_cycle() {
        let g = graph(&[
            ("a", &["a"]),
            ("b", &["c"]),
            ("c", &["d"]),
            ("d", &["b"]),
            ("e", &["b"]),
        ]);
        assert_eq!(
            find_cycles(&g),
            vec![vec!["a", "a"], vec!["b", "c", "d", "b"]]
        );
    }

    #[test]
    fn two_separate_cycles_both_found() {
        let g = graph(&[("a", &["b"]), ("b", &["a"]), ("x", &["y"]), ("y", &["x"])]);
        assert_eq!(find_cycles(&g).len(), 2);
    }

    #[test]
    fn long_chain_does_not_overflow() {
        let names: Vec<String> = (0..100_000).map(|i| format!("s{i:06}")).collect();
        let mut g: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for pair in names.windows(2) {
            g.insert(pair[0].clone(), vec![pair[1].clone()]);
        }
        g.insert(names[names.len() - 1].clone(), vec![names[0].clone()]);
        let cycles = find_cycles(&g);
        assert_eq!(cycles.len(), 1);
        assert_eq!(cycles[0].len(), 100_001);
    }
}
