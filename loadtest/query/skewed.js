// k6: the query API as Candybar uses it (one client, sequential requests on one
// keep-alive connection), over a database filled by loadtest/fill-skewed.sql: skewed
// event types, sources, sessions and payload values (issue 20).
//
// Each iteration asks every shape once, in the same order; each request is tagged with
// its shape, and each shape has its threshold. SHAPES=a,b runs a subset; ITERATIONS=n
// asks each shape n times rather than for DURATION (loadtest/query/partitions.py).
import http from 'k6/http';
import crypto from 'k6/crypto';
import { check } from 'k6';
import { Trend } from 'k6/metrics';

// Ten cursor pages in a row, as one figure (besides each page's).
const walkTime = new Trend('cursor_walk_10_pages', true);

const BASE = __ENV.BASE_URL || 'http://127.0.0.1:8683';
const DURATION = __ENV.DURATION || '60s';

const pick = (n) => Math.floor(Math.random() * n);
const session = (k) => crypto.md5(`session-${k}`, 'hex');
const contains = (doc) => encodeURIComponent(JSON.stringify(doc));
const hex = (v) => v.toString(16).padStart(16, '0');
// A cursor at a random time of the last 85 days.
const randomCursor = () => hex(BigInt(Date.now() - pick(85 * 86400) * 1000) * 1000n) + hex(BigInt(1 << 30));
// A skewed pick, as the data is: index k of n with probability falling like k^-(1-1/p).
const skewed = (n, p) => Math.floor(n * Math.random() ** p);

// name -> [p95 target in ms, request]. The targets are the issue's: 10 ms for a page by
// any filter, 50 ms for offset 10,000, the largest session's timeline and a rare
// combination of filters; each of ten cursor pages in a row within 10 ms, and the walk
// within 100 ms (cursor_walk_10_pages).
const shapes = {
  first_page: [10, () => get('/events?limit=100')],
  by_type_common: [10, () => get('/events?event_type=evt.0.done')],
  by_type_rare: [10, () => get('/events?event_type=evt.59.done')],
  by_source: [10, () => get(`/events?source=svc-${skewed(12, 2)}`)],
  by_target: [10, () => get('/events?target=candybar')],
  by_target_hermes_type: [50, () => get(`/events?target=hermes&event_type=evt.${skewed(60, 3)}.done`)],
  by_session: [10, () => get(`/events?session_id=${session(pick(2000))}`)],
  by_session_largest: [10, () => get(`/events?session_id=${session(0)}`)],
  by_time: [10, () => {
    const end = new Date(Date.now() - pick(85) * 86400000);
    const start = new Date(end.getTime() - 3600000);
    return get(`/events?start_time=${start.toISOString()}&end_time=${end.toISOString()}`);
  }],
  cursor_page: [10, () => get(`/events?limit=100&cursor=${randomCursor()}`)],
  cursor_pages_by_type: [10, () => walk(`/events?event_type=evt.${skewed(60, 3)}.done`, 10)],
  offset_10000: [50, () => get('/events?limit=100&offset=10000')],
  session_largest: [50, () => get(`/sessions/${session(0)}`)],
  session_timeline: [50, () => get(`/sessions/${session(pick(2000))}`)],
  payload_rare: [10, () => get(`/events?payload_contains=${contains({ repo: { name: `repo-${4900 + pick(100)}` } })}`)],
  payload_common: [10, () => get(`/events?payload_contains=${contains({ status: 'error' })}`)],
  payload_agent: [10, () => get(`/events?payload_contains=${contains({ agent: { model: 'haiku' } })}`)],
  type_source_rare: [50, () => get('/events?event_type=evt.59.done&source=svc-5')],
};

const chosen = __ENV.SHAPES ? __ENV.SHAPES.split(',') : Object.keys(shapes);
export const options = {
  scenarios: {
    candybar: __ENV.ITERATIONS
      ? { executor: 'shared-iterations', vus: 1, iterations: Number(__ENV.ITERATIONS) }
      : { executor: 'constant-vus', vus: 1, duration: DURATION },
  },
  thresholds: Object.assign(
    Object.fromEntries(chosen.map((n) => [`http_req_duration{shape:${n}}`, [`p(95)<${shapes[n][0]}`]])),
    chosen.includes('cursor_pages_by_type') ? { cursor_walk_10_pages: ['p(95)<100'] } : {},
  ),
  summaryTrendStats: ['avg', 'p(50)', 'p(95)', 'p(99)', 'max'],
};

let current = '';
function get(path) {
  const r = http.get(`${BASE}${path}`, { tags: { shape: current } });
  check(r, { 'status 200': (x) => x.status === 200 });
  return r;
}

// `pages` pages in a row, each after the previous one's next_cursor; the whole walk's
// server time is recorded in cursor_walk_10_pages.
function walk(first, pages) {
  let url = first;
  let total = 0;
  for (let i = 0; i < pages; i++) {
    const r = get(url);
    total += r.timings.duration;
    const next = r.status === 200 ? r.json('next_cursor') : null;
    if (!next) break;
    url = `${first}&cursor=${next}`;
  }
  walkTime.add(total);
}

export default function () {
  for (const n of chosen) {
    current = n;
    shapes[n][1]();
  }
}
