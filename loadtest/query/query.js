// k6: the query API over a database filled by loadtest/fill.sql.
// Targets (issue 3, at 10M rows): p95 <= 10 ms for the first page of each filter
// and for any cursor page; offset=10000 <= 50 ms.
import http from 'k6/http';
import { check } from 'k6';

const BASE = __ENV.BASE_URL || 'http://127.0.0.1:8683';
const ROWS = parseInt(__ENV.ROWS || '1000000');
const RATE = parseInt(__ENV.RATE || '5');
const DURATION = __ENV.DURATION || '20s';

const scenario = (exec) => ({ executor: 'constant-arrival-rate', rate: RATE, timeUnit: '1s', duration: DURATION, preAllocatedVUs: 10, exec });
const names = ['first_page', 'by_session', 'by_type', 'by_source', 'by_correlation', 'by_target', 'by_time', 'cursor_page', 'offset_10000', 'by_id'];
export const options = {
  scenarios: Object.fromEntries(names.map((n) => [n, scenario(n)])),
  thresholds: Object.fromEntries(names.map((n) => [`http_req_duration{scenario:${n}}`, [n === 'offset_10000' ? 'p(95)<50' : 'p(95)<10']])),
  summaryTrendStats: ['avg', 'p(50)', 'p(95)', 'p(99)', 'max'],
};

const pick = (n) => Math.floor(Math.random() * n);
const ok = (r) => check(r, { 'status 200': (x) => x.status === 200 });

export function first_page() { ok(http.get(`${BASE}/events?limit=100`)); }
export function by_session() { ok(http.get(`${BASE}/events?session_id=sess-${pick(1000)}`)); }
export function by_type() { ok(http.get(`${BASE}/events?event_type=load.type.${pick(40)}`)); }
export function by_source() { ok(http.get(`${BASE}/events?source=svc-${pick(20)}`)); }
export function by_correlation() { ok(http.get(`${BASE}/events?correlation_id=corr-${pick(ROWS / 10)}`)); }
export function by_target() { ok(http.get(`${BASE}/events?target=candybar`)); }
export function by_time() {
  const end = new Date(Date.now() - pick(29) * 86400000);
  const start = new Date(end.getTime() - 3600000);
  ok(http.get(`${BASE}/events?start_time=${start.toISOString()}&end_time=${end.toISOString()}`));
}
// A cursor deep in the walk: the cursor of a random recent timestamp.
export function cursor_page() {
  const ts = BigInt(Date.now() - pick(25 * 86400) * 1000) * 1000n;
  const hex = (v) => v.toString(16).padStart(16, '0');
  const cursor = hex(ts) + hex(BigInt(1 << 30));
  ok(http.get(`${BASE}/events?limit=100&cursor=${cursor}`, { tags: { name: 'cursor' } }));
}
export function offset_10000() { ok(http.get(`${BASE}/events?limit=100&offset=10000`)); }
export function by_id() { ok(http.get(`${BASE}/events/load-${1 + pick(ROWS)}`, { tags: { name: 'by_id' } })); }
