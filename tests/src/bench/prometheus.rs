//! Reading a Prometheus text exposition (a `/metrics` scrape): sums, histogram averages and
//! quantiles, as the shell script's Python helpers computed them.

/// One sample: `name{labels} value`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Sample {
    pub(crate) name: String,
    /// The label text with its braces (`{stage="decide"}`), or empty.
    pub(crate) labels: String,
    pub(crate) value: f64,
}

/// A scrape's samples (an empty text, from a failed scrape, has none).
#[derive(Debug, Clone, Default)]
pub(crate) struct Scrape(Vec<Sample>);

impl Scrape {
    /// Parses every sample line (`^name(\{...\})?\s+value`); comments and other lines are
    /// skipped.
    pub(crate) fn parse(text: &str) -> Self {
        Scrape(
            text.lines()
                .filter(|line| !line.starts_with('#'))
                .filter_map(|line| sample(line.trim()))
                .collect(),
        )
    }

    /// This scrape with `other`'s samples added (scrapes of two services, whose metric names
    /// differ).
    pub(crate) fn merged(mut self, other: Scrape) -> Self {
        self.0.extend(other.0);
        self
    }

    /// The sum of the samples named `name` (all label sets).
    pub(crate) fn value_of(&self, name: &str) -> f64 {
        self.total(name, "")
    }

    /// The sum of the samples named `name` whose label text contains `label` (any if empty).
    pub(crate) fn total(&self, name: &str, label: &str) -> f64 {
        self.0
            .iter()
            .filter(|s| s.name == name && (label.is_empty() || s.labels.contains(label)))
            .map(|s| s.value)
            .sum()
    }

    /// `(sum, count)` of a histogram.
    pub(crate) fn histogram(&self, name: &str) -> (f64, f64) {
        (
            self.value_of(&format!("{name}_sum")),
            self.value_of(&format!("{name}_count")),
        )
    }

    /// A histogram's cumulative buckets `(upper bound, count)`, summed over the label sets whose
    /// text contains `label` (all if empty) and sorted by bound.
    pub(crate) fn buckets(&self, metric: &str, label: &str) -> Vec<(f64, f64)> {
        let name = format!("{metric}_bucket");
        let mut out: Vec<(f64, f64)> = Vec::new();
        for s in self
            .0
            .iter()
            .filter(|s| s.name == name && (label.is_empty() || s.labels.contains(label)))
        {
            let Some(bound) = le(&s.labels) else { continue };
            match out.iter_mut().find(|(b, _)| *b == bound) {
                Some((_, count)) => *count += s.value,
                None => out.push((bound, s.value)),
            }
        }
        out.sort_by(|a, b| a.0.total_cmp(&b.0));
        out
    }
}

fn sample(line: &str) -> Option<Sample> {
    let name_end = line
        .char_indices()
        .find(|&(i, c)| {
            !(c.is_ascii_alphabetic() || c == '_' || c == ':' || (i > 0 && c.is_ascii_digit()))
        })
        .map_or(line.len(), |(i, _)| i);
    if name_end == 0 {
        return None;
    }
    let (name, rest) = line.split_at(name_end);
    let (labels, rest) = match rest.strip_prefix('{') {
        Some(inner) => {
            let close = inner.find('}')?;
            (&rest[..close + 2], &inner[close + 1..])
        }
        None => ("", rest),
    };
    if !rest.starts_with(char::is_whitespace) {
        return None;
    }
    let value = rest.split_whitespace().next()?.parse().ok()?;
    Some(Sample {
        name: name.into(),
        labels: labels.into(),
        value,
    })
}

/// The `le` label's bound (`+Inf` is infinity).
fn le(labels: &str) -> Option<f64> {
    let start = labels.find("le=\"")? + 4;
    let len = labels[start..].find('"')?;
    match &labels[start..start + len] {
        "+Inf" => Some(f64::INFINITY),
        bound => bound.parse().ok(),
    }
}

/// The buckets of `metric` (label sets containing `label`, all if empty) in `after` minus those
/// in `before` (what was observed in between).
pub(crate) fn bucket_delta(
    before: &Scrape,
    after: &Scrape,
    metric: &str,
    label: &str,
) -> Vec<(f64, f64)> {
    let before = before.buckets(metric, label);
    after
        .buckets(metric, label)
        .into_iter()
        .map(|(bound, count)| {
            let earlier = before
                .iter()
                .find(|(b, _)| *b == bound)
                .map_or(0.0, |(_, c)| *c);
            (bound, count - earlier)
        })
        .collect()
}

/// Prometheus's `histogram_quantile` over sorted `(upper bound, cumulative count)` pairs.
pub(crate) fn quantile(q: f64, cumulative: &[(f64, f64)]) -> Option<f64> {
    let total = cumulative.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let (mut lower, mut below) = (0.0, 0.0);
    for &(bound, count) in cumulative {
        if count >= rank {
            if bound.is_infinite() {
                return Some(lower);
            }
            if count == below {
                return Some(bound);
            }
            return Some(lower + (bound - lower) * (rank - below) / (count - below));
        }
        (lower, below) = (bound, count);
    }
    Some(lower)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "# HELP lag_seconds x\n\
        lag_seconds_bucket{p=\"a\",le=\"0.1\"} 2\n\
        lag_seconds_bucket{p=\"b\",le=\"0.1\"} 2\n\
        lag_seconds_bucket{le=\"1\"} 8\n\
        lag_seconds_bucket{le=\"+Inf\"} 10\n\
        lag_seconds_sum 3.5\n\
        lag_seconds_count 10\n\
        stage_seconds_sum{stage=\"decide\"} 1.5\n\
        stage_seconds_sum{stage=\"commit\"} 2\n\
        not a sample\n";

    #[test]
    fn sums_and_labels() {
        let scrape = Scrape::parse(TEXT);
        assert_eq!(scrape.histogram("lag_seconds"), (3.5, 10.0));
        assert_eq!(scrape.value_of("stage_seconds_sum"), 3.5);
        assert_eq!(scrape.total("stage_seconds_sum", "stage=\"decide\""), 1.5);
        assert_eq!(
            scrape.buckets("lag_seconds", ""),
            vec![(0.1, 4.0), (1.0, 8.0), (f64::INFINITY, 10.0)]
        );
        assert_eq!(scrape.buckets("lag_seconds", "p=\"a\""), vec![(0.1, 2.0)]);
    }

    #[test]
    fn quantiles_like_prometheus() {
        let after = Scrape::parse(TEXT);
        let delta = bucket_delta(&Scrape::default(), &after, "lag_seconds", "");
        // rank 5 lies in (0.1, 1]: 0.1 + 0.9 * (5 - 4) / (8 - 4)
        assert_eq!(quantile(0.5, &delta), Some(0.1 + 0.9 * 0.25));
        // rank 9.9 lies in the +Inf bucket: its lower bound
        assert_eq!(quantile(0.99, &delta), Some(1.0));
        assert_eq!(
            quantile(0.5, &bucket_delta(&after, &after, "lag_seconds", "")),
            None
        );
        assert_eq!(quantile(0.5, &[]), None);
    }
}
