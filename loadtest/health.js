// k6: /health and /metrics under load. The query API scripts join this folder
// with the query API. Usage: BASE_URL=http://127.0.0.1:8683 METRICS_URL=http://127.0.0.1:9090 k6 run health.js
import http from 'k6/http';
import { check } from 'k6';

const BASE = __ENV.BASE_URL || 'http://127.0.0.1:8683';
const METRICS = __ENV.METRICS_URL || 'http://127.0.0.1:9090';

export const options = {
  scenarios: {
    health: { executor: 'constant-arrival-rate', rate: 200, timeUnit: '1s', duration: '15s', preAllocatedVUs: 20, exec: 'health' },
    metrics: { executor: 'constant-arrival-rate', rate: 5, timeUnit: '1s', duration: '15s', preAllocatedVUs: 2, exec: 'metrics' },
  },
  thresholds: {
    'http_req_duration{scenario:health}': ['p(95)<20'],
    'http_req_duration{scenario:metrics}': ['p(95)<50'],
    checks: ['rate==1'],
  },
};

export function health() {
  const r = http.get(`${BASE}/health`);
  check(r, { 'health is 200': (x) => x.status === 200, 'healthy': (x) => x.json('status') === 'healthy' });
}

export function metrics() {
  const r = http.get(`${METRICS}/metrics`);
  check(r, { 'metrics is 200': (x) => x.status === 200, 'has storage latency': (x) => x.body.includes('candystore_storage_latency_seconds') });
}
