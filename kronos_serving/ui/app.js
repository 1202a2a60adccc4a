// Kronos forecast-quality page: CSV in, forecasts, backtests and accuracy tables out.
// Plain JavaScript over the service's JSON API; charts by the vendored Chart.js (UMD build).
"use strict";

const COLUMNS = ["open", "high", "low", "close", "volume", "amount"];
const TIME_NAMES = ["timestamp", "timestamps", "date", "datetime", "time"];
const HISTORY_SHOWN = 200;     // history bars drawn before the forecast
const MAX_LOOKBACK = 512;      // history rows sent per forecast (the model's context)
const COLOURS = ["#2f6fde", "#d9480f", "#2b8a3e", "#9c36b5", "#e67700", "#0b7285"];
const METRICS = [["mae", "MAE"], ["rmse", "RMSE"], ["mape", "MAPE %"], ["smape", "sMAPE %"],
                 ["mase", "MASE"], ["direction_accuracy", "direction"],
                 ["interval_coverage", "interval cov."], ["pinball_loss", "pinball"], ["crps", "CRPS"]];

const state = { series: null, backtest: null, charts: {} };
const $ = (id) => document.getElementById(id);

function parseCsv(text) {
  const lines = text.split(/\r?\n/).map((l) => l.trim()).filter((l) => l.length);
  if (lines.length < 3) throw new Error("the CSV needs a header and at least 2 rows");
  const header = lines[0].split(",").map((h) => h.trim().toLowerCase());
  let timeIndex = header.findIndex((h) => TIME_NAMES.includes(h));
  if (timeIndex < 0 && !COLUMNS.includes(header[0])) timeIndex = 0;
  if (timeIndex < 0) throw new Error("no timestamp column (timestamp, date, datetime or time)");
  const columns = COLUMNS.filter((c) => header.includes(c));
  for (const needed of ["open", "high", "low", "close"]) {
    if (!columns.includes(needed)) throw new Error(`missing column '${needed}'`);
  }
  const timestamps = [], rows = [];
  lines.slice(1).forEach((line, i) => {
    const cells = line.split(",");
    const row = columns.map((c) => Number(cells[header.indexOf(c)]));
    if (row.some((v) => !Number.isFinite(v))) throw new Error(`row ${i + 1}: values must be numbers`);
    timestamps.push(cells[timeIndex].trim());
    rows.push(row);
  });
  return { timestamps, rows, columns };
}

function loadCsv(text) {
  $("csv-text").value = text;
  state.series = parseCsv(text);
  const s = state.series;
  $("data-summary").textContent = `${s.rows.length} rows, ${s.timestamps[0]} to ` +
    `${s.timestamps[s.timestamps.length - 1]}, columns ${s.columns.join(", ")}`;
}

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = $("api-key").value.trim();
  if (key) h.Authorization = `Bearer ${key}`;
  return h;
}

async function api(path, body) {
  const response = await fetch(path, body === undefined ? { headers: headers() }
    : { method: "POST", headers: headers(), body: JSON.stringify(body) });
  const json = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(json.error || `${path}: HTTP ${response.status}`);
  return json;
}

async function loadVersions() {
  try {
    const ready = await fetch("/v1/readyz").then((r) => r.json());
    const select = $("model-version");
    for (const v of ready.variants || []) {
      const option = document.createElement("option");
      option.value = v.model_version;
      option.textContent = `${v.model} (weight ${v.weight})`;
      select.appendChild(option);
    }
    $("service-status").textContent = ready.ready
      ? `ready: ${(ready.variants || []).length} model version(s) on ${ready.device}` +
        (ready.dev_checkpoint ? " (dev checkpoint, random weights)" : "")
      : `not ready: ${ready.status}`;
  } catch (err) {
    $("service-status").textContent = `service unreachable: ${err.message}`;
  }
}

function quantileLevels() {
  const text = $("quantiles").value.trim();
  return text ? text.split(",").map(Number).filter((q) => q > 0 && q < 1) : [];
}

function settings() {
  if (!state.series) loadCsv($("csv-text").value);
  return { horizon: Number($("horizon").value), paths: Number($("paths").value),
           quantiles: quantileLevels(), seed: $("seed").value === "" ? null : Number($("seed").value),
           version: $("model-version").value || null };
}

function drawChart(id, labels, datasets) {
  if (state.charts[id]) state.charts[id].destroy();
  state.charts[id] = new Chart($(id), {
    type: "line", data: { labels, datasets },
    options: { animation: false, responsive: true, maintainAspectRatio: false, spanGaps: false,
               elements: { point: { radius: 0 } }, interaction: { mode: "index", intersect: false },
               scales: { x: { ticks: { maxTicksLimit: 10 } } },
               plugins: { legend: { labels: { filter: (item) => !item.text.startsWith("_") } } } } });
  $(id).dataset.drawn = "true";
}

function pad(values, before, after) {
  return [...Array(before).fill(null), ...values, ...Array(after).fill(null)];
}

function closeOf(row) { return row[state.series.columns.indexOf("close")]; }

async function runForecast() {
  const s = settings();
  const series = state.series;
  const lookback = Math.min(series.rows.length, MAX_LOOKBACK);
  const body = { data: series.rows, columns: series.columns, timestamps: series.timestamps,
                 lookback, pred_len: s.horizon, sample_count: s.paths, calendar: $("calendar").value };
  if (s.quantiles.length) body.quantiles = s.quantiles;
  if (s.seed !== null) body.seed = s.seed;
  if (s.version) body.model_version = s.version;
  const result = await api("/v1/predict/single", body);
  const shown = series.rows.slice(-HISTORY_SHOWN);
  const history = shown.map(closeOf);
  const future = result.predictions.map((p) => p.close);
  const labels = [...series.timestamps.slice(-HISTORY_SHOWN), ...result.predictions.map((p) => p.timestamp)];
  const datasets = [
    { label: "history close", data: pad(history, 0, future.length), borderColor: "#495057", borderWidth: 1 },
    { label: `forecast close (${result.model_version})`, borderColor: COLOURS[0], borderWidth: 2,
      data: pad([history[history.length - 1], ...future], history.length - 1, 0) }];
  const levels = Object.keys(result.quantiles || {}).sort((a, b) => a - b);
  if (levels.length >= 2) {
    const low = levels[0], high = levels[levels.length - 1];
    datasets.push({ label: `_q${low}`, data: pad(result.quantiles[low].map((p) => p.close), history.length, 0),
                    borderColor: "transparent", pointRadius: 0 });
    datasets.push({ label: `band ${low}-${high}`, fill: "-1", backgroundColor: "rgba(47,111,222,0.18)",
                    borderColor: "transparent",
                    data: pad(result.quantiles[high].map((p) => p.close), history.length, 0) });
  }
  drawChart("forecast-chart", labels, datasets);
  const cal = result.calendar || {};
  $("forecast-summary").textContent = `${result.predictions.length} steps from ${result.model_version}` +
    ` (seed ${result.seed}); calendar rule: ${cal.rule || "?"}` +
    (cal.name ? ` ${cal.name}` : "") + (cal.session ? `, session ${cal.session}` : "");
}

async function runBacktest() {
  const s = settings();
  const series = state.series;
  const body = { series: [{ data: series.rows, columns: series.columns, timestamps: series.timestamps }],
                 horizon: s.horizon, folds: Number($("folds").value), sample_count: s.paths };
  if ($("step").value) body.step = Number($("step").value);
  if (s.quantiles.length) body.quantiles = s.quantiles;
  if (s.seed !== null) body.seed = s.seed;
  if (s.version) body.model_versions = [s.version];
  state.backtest = await api("/v1/backtest", body);
  drawBacktest();
  drawMetrics();
}

function drawBacktest() {
  const report = state.backtest, series = state.series;
  const firstOrigin = series.timestamps.findIndex((t) => sameTime(t, report.folds[0].origin));
  const start = Math.max(0, firstOrigin - 2 * report.config.horizon);
  const labels = series.timestamps.slice(start);
  const datasets = [{ label: "actual close", data: series.rows.slice(start).map(closeOf),
                      borderColor: "#495057", borderWidth: 1 }];
  const versions = [...new Set(report.folds.map((f) => f.model_version))];
  for (const fold of report.folds) {
    const offset = series.timestamps.findIndex((t) => sameTime(t, fold.timestamps[0])) - start;
    const colour = COLOURS[versions.indexOf(fold.model_version) % COLOURS.length];
    datasets.push({ label: `_${fold.model_version} ${fold.origin}`, borderColor: colour, borderWidth: 2,
                    data: pad(fold.forecast.close, offset, labels.length - offset - fold.forecast.close.length) });
  }
  versions.forEach((v, i) => datasets.push({ label: `forecast ${v}`, data: [], borderColor: COLOURS[i % COLOURS.length] }));
  drawChart("backtest-chart", labels, datasets);
  $("backtest-summary").textContent = `${report.folds.length} folds of ${report.config.horizon} steps ` +
    `(${versions.length} model version(s)), step ${report.config.step}, seasonal period ` +
    `${report.config.season_periods.join(", ")}.`;
}

function sameTime(a, b) { return new Date(a.replace(" ", "T")).getTime() === new Date(b).getTime(); }

function drawMetrics() {
  if (!state.backtest) return;
  metricsTable($("metrics-table"), state.backtest.metrics, $("metric-column").value);
}

async function refreshLive() {
  const since = $("live-since").value;
  const live = await api(`/v1/accuracy${since ? `?since=${since}` : ""}`);
  const versions = Object.keys(live.metrics);
  metricsTable($("live-table"), live.metrics, "close");
  $("live-summary").textContent = versions.length
    ? versions.map((v) => `${v}: ${live.scored_steps[v]} scored steps`).join("; ")
    : "No scored forecasts yet: send forecasts with a series_id, then their outcomes.";
}

// One row per model version (or baseline), one column per metric; the best value in bold.
function metricsTable(table, metrics, column) {
  metrics = Object.fromEntries(Object.entries(metrics).filter(([, m]) => m[column]));
  const shown = METRICS.filter(([key]) => Object.values(metrics).some((m) => m[column][key] !== undefined));
  table.tHead.innerHTML = `<tr><th>model version / baseline</th>${shown.map(([, t]) => `<th>${t}</th>`).join("")}</tr>`;
  const best = {};
  for (const [key] of shown) {
    const values = Object.values(metrics).map((m) => m[column][key]).filter((v) => v !== null && v !== undefined);
    best[key] = key === "direction_accuracy" ? Math.max(...values) : Math.min(...values);
  }
  table.tBodies[0].innerHTML = Object.entries(metrics).map(([name, m]) => {
    const baseline = name === "naive" || name === "seasonal_naive";
    const cells = shown.map(([key]) => {
      const v = m[column][key];
      const good = key !== "interval_coverage" && v === best[key];
      return `<td class="${good ? "best" : ""}">${v === null || v === undefined ? "–" : v.toFixed(4)}</td>`;
    }).join("");
    return `<tr class="${baseline ? "baseline" : ""}"><td>${name}</td>${cells}</tr>`;
  }).join("");
}

function guarded(button, work) {
  $(button).addEventListener("click", async () => {
    $("error").textContent = "";
    $(button).disabled = true;
    $("busy").textContent = "working…";
    try { await work(); } catch (err) { $("error").textContent = err.message; }
    finally { $(button).disabled = false; $("busy").textContent = ""; }
  });
}

document.addEventListener("DOMContentLoaded", () => {
  $("load-example").addEventListener("click", async () => {
    $("error").textContent = "";
    try { loadCsv(await fetch("example.csv").then((r) => r.text())); }
    catch (err) { $("error").textContent = err.message; }
  });
  $("csv-file").addEventListener("change", async (event) => {
    try { loadCsv(await event.target.files[0].text()); } catch (err) { $("error").textContent = err.message; }
  });
  $("csv-text").addEventListener("change", () => {
    try { loadCsv($("csv-text").value); } catch (err) { $("error").textContent = err.message; }
  });
  $("metric-column").addEventListener("change", drawMetrics);
  guarded("run-forecast", runForecast);
  guarded("run-backtest", runBacktest);
  guarded("refresh-live", refreshLive);
  loadVersions().then(() => refreshLive().catch((err) => { $("live-summary").textContent = err.message; }));
});
