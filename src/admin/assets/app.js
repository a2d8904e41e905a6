// mcpflip status page: redraws the server-rendered sections live from the
// admin listener's /events feed (EventSource). The same sections, structure
// and wording as the server's rendering (src/admin/page.rs). Text only: every
// value is set with textContent or setAttribute, never parsed as HTML (the
// page's CSP enforces that with Trusted Types).
'use strict';

(() => {
  const KEEP = 50; // events listed, as the server keeps
  const SPARK_POINTS = 600; // drain samples kept per slot (10 min at one a second)
  const SVG = 'http://www.w3.org/2000/svg';

  const model = {
    status: null,
    recent: [],
    // slot -> { deadline, points: [[elapsed_ms, live_streams]] }
    drains: new Map(),
  };

  // ---- DOM helpers --------------------------------------------------------

  function h(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v !== null && v !== undefined) e.setAttribute(k, String(v));
    }
    for (const c of children) {
      if (c === null || c === undefined || c === false) continue;
      e.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return e;
  }

  function s(tag, attrs) {
    const e = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
    return e;
  }

  const pad = (n) => String(n).padStart(2, '0');

  // HH:MM:SS, UTC, of milliseconds since the Unix epoch.
  function clock(ms) {
    const t = Math.floor(ms / 1000) % 86400;
    return `${pad(Math.floor(t / 3600))}:${pad(Math.floor(t / 60) % 60)}:${pad(t % 60)}`;
  }

  function dur(ms) {
    if (ms < 10000) return `${(ms / 1000).toFixed(1)} s`;
    if (ms < 120000) return `${Math.floor(ms / 1000)} s`;
    const sec = Math.floor(ms / 1000) % 60;
    return sec === 0 ? `${Math.floor(ms / 60000)} min` : `${Math.floor(ms / 60000)} min ${sec} s`;
  }

  const count = (n, one, many) => `${n} ${n === 1 ? one : many}`;

  // ---- slots --------------------------------------------------------------

  function renderSlots(st) {
    const rows = st.slots.map((x) =>
      h('tr', { 'data-slot': x.name, 'data-state': x.state },
        h('td', { class: 'name' }, x.name),
        h('td', { class: 'state' }, h('span', { class: `badge ${x.state}` }, x.state)),
        h('td', { class: 'num weight' }, x.weight),
        h('td', { class: 'num generation' }, x.generation),
        h('td', { class: 'num live' }, x.live_streams),
        h('td', { class: 'num inflight' }, x.inflight),
        h('td', { class: 'upstream' }, x.upstream)));
    document.querySelector('#slots tbody').replaceChildren(...rows);
    const active = st.active || 'none';
    document.querySelector('#active b').textContent = active;
    document.title = `mcpflip · ${active}`;
  }

  // ---- fleet --------------------------------------------------------------

  // What a drain of `slot` waits for: this instance's counts, and in a fleet
  // every other instance's as published (src/admin/page.rs's `drain_counts`).
  function drainCounts(st, slot) {
    const here = st.slots.find((y) => y.name === slot) || { live_streams: 0, inflight: 0 };
    const c = st.cluster;
    if (!c) return { live: here.live_streams, inflight: here.inflight, here: null };
    let live = here.live_streams, inflight = here.inflight;
    for (const i of c.instances || []) {
      if (i.name === c.instance) continue;
      for (const x of i.slots || []) {
        if (x.slot === slot) { live += x.live_streams; inflight += x.inflight; }
      }
    }
    return { live, inflight, here: here.live_streams };
  }

  function liveText(n) {
    const t = count(n.live, 'live stream', 'live streams');
    return n.here === null ? t : `${t} in the fleet (${n.here} here)`;
  }

  function renderFleet(st) {
    const root = document.getElementById('fleet');
    const c = st.cluster;
    if (!root || !c) return;
    const etcd = c.connected
      ? h('span', { class: 'etcd up' }, 'connected')
      : h('span', { class: 'etcd down' },
        c.disconnected_since_ms ? `unreachable since ${clock(c.disconnected_since_ms)}` : 'unreachable');
    const head = h('p', { class: 'fleet-head', 'data-connected': String(c.connected) },
      'this instance ', h('b', {}, c.instance), ' · etcd ', etcd,
      ` · table revision ${c.revision} · deploy lock `, h('b', { class: 'lock' }, c.deploy_lock || 'free'));
    const names = st.slots.map((x) => x.name);
    const cells = (counts) => names.map((slot) => {
      const x = (counts || []).find((y) => y.slot === slot) || { live_streams: 0, inflight: 0 };
      return h('td', { class: 'num', 'data-slot': slot }, `${x.live_streams} / ${x.inflight}`);
    });
    const rows = (c.instances || []).map((i) =>
      h('tr', { 'data-instance': i.name },
        h('td', { class: 'name' }, i.name + (i.name === c.instance ? ' (this one)' : '')),
        h('td', { class: 'num age' }, `${dur(i.lease_age_ms)} ago`),
        ...cells(i.slots)));
    rows.push(h('tr', { class: 'total', 'data-instance': '' },
      h('td', { class: 'name' }, 'fleet'), h('td', {}), ...cells(c.totals)));
    const table = h('table', { id: 'instances' },
      h('thead', {}, h('tr', {}, h('th', {}, 'instance'), h('th', { class: 'num' }, 'counts from'),
        ...names.map((n) => h('th', { class: 'num' }, `${n} live / in flight`)))),
      h('tbody', {}, ...rows));
    root.replaceChildren(head, table);
  }

  // ---- migration ----------------------------------------------------------

  // A byte count as people read it (src/admin/page.rs's `size`).
  function size(n) {
    if (n < 1024) return `${n} B`;
    if (n < 1048576) return `${(n / 1024).toFixed(1)} KiB`;
    return `${(n / 1048576).toFixed(1)} MiB`;
  }

  function renderMigration(st) {
    const root = document.getElementById('migration');
    const m = st.migration;
    if (!root || !m) return;
    const entries = Object.entries(m.failed || {});
    const failed = entries.reduce((a, [, n]) => a + n, 0);
    const causes = entries.filter(([, n]) => n > 0).map(([c, n]) => `${n} ${c}`);
    const text = `${count(m.captured_sessions, 'session', 'sessions')} captured (${size(m.captured_bytes)})`
      + ` · ${m.migrated} moved · ${failed} could not move${causes.length ? ` (${causes.join(', ')})` : ''}`
      + ` · ${count(m.interrupted_calls, 'call interrupted', 'calls interrupted')}`;
    root.replaceChildren(h('p', { class: 'migration-counts', 'data-migrated': m.migrated, 'data-failed': failed }, text));
  }

  // ---- acme ---------------------------------------------------------------

  function renderAcme(st) {
    const root = document.getElementById('acme');
    const a = st.acme;
    if (!root || !a) return;
    let counts = `${a.issued} issued, ${a.failed} failed`;
    if (a.shared > 0) counts += `, ${a.shared} taken from the fleet`;
    if (a.issued_at_ms) counts += ` · last certificate at ${clock(a.issued_at_ms)}`;
    if (a.next_check_ms) counts += ` · next look at ${clock(a.next_check_ms)}`;
    const out = [
      h('p', { class: 'acme-head' }, h('b', {}, a.domains.join(', ')), ' from ',
        h('span', { class: 'directory' }, a.directory)),
      h('p', { class: 'acme-counts', 'data-issued': a.issued, 'data-failed': a.failed }, counts),
    ];
    if (a.error) out.push(h('p', { class: 'acme-error' }, `last order failed: ${a.error}`));
    root.replaceChildren(...out);
  }

  // ---- drain --------------------------------------------------------------

  // Live streams of a draining slot over time, against its deadline: the x
  // axis runs to 1.5x the time so far (at least 10 s), up to the deadline.
  function spark(d) {
    const W = 600, H = 110, L = 24, B = 14;
    const last = d.points[d.points.length - 1] || [0, 0];
    // At least 1 ms: a drain cut at once (`--migrate`) has a deadline of 0.
    const span = Math.max(1, Math.min(d.deadline, Math.max(10000, last[0] * 1.5)));
    const top = Math.max(1, ...d.points.map((p) => p[1]));
    const x = (ms) => L + ((W - L - 4) * Math.min(ms, span)) / span;
    const y = (n) => 4 + ((H - B - 4) * (top - n)) / top;
    const svg = s('svg', { class: 'spark', viewBox: `0 0 ${W} ${H}`, role: 'img' });
    svg.append(s('line', { class: 'axis', x1: L, y1: y(0), x2: W - 4, y2: y(0) }));
    svg.append(s('line', { class: 'axis', x1: L, y1: 4, x2: L, y2: y(0) }));
    const t0 = s('text', { x: 2, y: y(0) + 3 });
    t0.textContent = '0';
    const t1 = s('text', { x: 2, y: 12 });
    t1.textContent = String(top);
    const t2 = s('text', { x: W - 4, y: H - 2, 'text-anchor': 'end' });
    t2.textContent = span >= d.deadline ? `deadline ${dur(d.deadline)}` : dur(span);
    const t3 = s('text', { x: W - 4, y: 12, 'text-anchor': 'end' });
    t3.textContent = 'live streams since the drain started';
    svg.append(t0, t1, t2, t3);
    if (span >= d.deadline) {
      svg.append(s('line', { class: 'deadline', x1: x(d.deadline), y1: 4, x2: x(d.deadline), y2: y(0) }));
    }
    // A step line: the count holds until the next sample.
    const pts = [];
    let prev = null;
    for (const [ms, n] of d.points) {
      if (prev !== null) pts.push(`${x(ms)},${y(prev)}`);
      pts.push(`${x(ms)},${y(n)}`);
      prev = n;
    }
    svg.append(s('polyline', { class: 'line', points: pts.join(' ') }));
    svg.append(s('circle', { class: 'dot', cx: x(last[0]), cy: y(last[1]), r: 3 }));
    return svg;
  }

  function sample(slot, elapsed, deadline, live) {
    let d = model.drains.get(slot);
    const last = d && d.points[d.points.length - 1];
    if (!d || (last && elapsed < last[0])) {
      d = { deadline, points: [] }; // a new drain of this slot
      model.drains.set(slot, d);
    }
    d.deadline = deadline;
    if (!last || last[0] !== elapsed || last[1] !== live) d.points.push([elapsed, live]);
    if (d.points.length > SPARK_POINTS) d.points.shift();
  }

  function drainedText(x) {
    let t = `${x.slot} drained after ${dur(x.drained_after_ms)}`;
    if (x.forced > 0) t += `, ${count(x.forced, 'stream', 'streams')} ended at the deadline`;
    return t;
  }

  function renderDrains(st) {
    const out = [];
    const running = new Set();
    for (const d of st.drains || []) {
      running.add(d.slot);
      const x = drainCounts(st, d.slot);
      sample(d.slot, d.elapsed_ms, d.deadline_ms, x.live);
      out.push(h('div', { class: 'drain', 'data-slot': d.slot },
        h('p', { class: 'drain-head' }, h('b', {}, d.slot), ' ',
          h('span', { class: 'live' }, liveText(x)), ', ',
          h('span', { class: 'inflight' }, `${x.inflight} in flight`)),
        spark(model.drains.get(d.slot)),
        h('p', { class: 'clock' },
          h('meter', { min: 0, max: d.deadline_ms, value: Math.min(d.elapsed_ms, d.deadline_ms) }), ' ',
          h('span', {}, `${dur(d.elapsed_ms)} of ${dur(d.deadline_ms)} deadline`))));
    }
    for (const slot of [...model.drains.keys()]) {
      if (!running.has(slot)) model.drains.delete(slot);
    }
    if (out.length === 0) {
      out.push(h('p', { class: 'none' }, 'No drain runs.'));
      for (const x of (st.deploy && st.deploy.drained) || []) {
        out.push(h('p', { class: 'last-drain' }, `last: ${drainedText(x)}`));
      }
    }
    document.getElementById('drains').replaceChildren(...out);
  }

  // ---- deploy -------------------------------------------------------------

  function phase(name, state, detail) {
    return { name, state, detail: detail || '', steps: [], meter: null };
  }

  // The phases of a deploy, as src/admin/page.rs derives them.
  function phases(d, st) {
    const failed = d.phase === 'failed';
    const ended = d.phase === 'passed' || failed;
    const out = [];
    let probe;
    if (d.probe && d.probe.ok) probe = phase('probe', 'done', `passed in ${d.probe.ms} ms`);
    else if (d.probe) probe = phase('probe', 'failed', `failed: ${d.probe.error || 'unknown failure'}`);
    else if (d.phase === 'probe') probe = phase('probe', 'active', `probing ${d.to}`);
    else probe = phase('probe', 'skipped', 'not run');
    if (d.probe) {
      probe.steps = d.probe.steps.map((x) => [x.ok, `${x.step} ${x.ms} ms${x.ok ? '' : `: ${x.detail}`}`]);
    }
    out.push(probe);
    if (d.flipped_at) out.push(phase('flip', 'done', `${d.from || '(none)'} → ${d.to} at ${clock(d.flipped_at)}`));
    else out.push(phase('flip', failed ? 'skipped' : 'pending'));
    const draining = d.draining || [];
    const drained = d.drained || [];
    if (!d.flipped_at) {
      out.push(phase('drain', failed ? 'skipped' : 'pending'));
    } else if (draining.length === 0) {
      out.push(phase('drain', 'done', 'nothing to drain'));
    } else {
      const texts = [];
      let meter = null;
      for (const slot of draining) {
        const x = drained.find((y) => y.slot === slot);
        const r = (st.drains || []).find((y) => y.slot === slot);
        if (x) {
          texts.push(drainedText(x));
        } else if (r) {
          texts.push(`${slot}: ${liveText(drainCounts(st, slot))}, ${dur(r.elapsed_ms)} of ${dur(r.deadline_ms)}`);
          meter = [Math.min(r.elapsed_ms, r.deadline_ms), r.deadline_ms];
        } else {
          texts.push(`${slot}: drain ended early`);
        }
      }
      const all = draining.every((x) => drained.some((y) => y.slot === x));
      const state = all ? 'done' : d.phase === 'drain' ? 'active' : 'skipped';
      const p = phase('drain', state, texts.join('; '));
      p.meter = meter;
      out.push(p);
    }
    const w = st.watch && st.watch.slot === d.to && !ended ? st.watch : null;
    const o = d.watch;
    if (o && o.result === 'passed') out.push(phase('watch', 'done', `passed, ${count(o.probes, 'probe', 'probes')}`));
    else if (o && (o.result === 'rolled_back' || o.result === 'failed')) out.push(phase('watch', 'failed', `failed: ${o.reason}`));
    else if (o) out.push(phase('watch', 'skipped', `ended early: ${o.reason}`));
    else if (w && d.flipped_at) {
      const p = phase('watch', 'active',
        `${w.slot}: ${dur(Math.max(0, w.window_ms - w.elapsed_ms))} left, ${count(w.probes, 'probe', 'probes')} passed`);
      p.meter = [Math.min(w.elapsed_ms, w.window_ms), w.window_ms];
      out.push(p);
    } else out.push(phase('watch', failed ? 'skipped' : 'pending'));
    if (o && o.result === 'rolled_back') out.push(phase('rollback', 'done', `rolled back to ${o.to}: ${o.reason}`));
    if (d.phase === 'passed') out.push(phase('result', 'done', `passed in ${dur(d.elapsed_ms)}`));
    else if (failed) out.push(phase('result', 'failed', d.error || 'failed'));
    else out.push(phase('result', 'pending', `running for ${dur(d.elapsed_ms)}`));
    return out;
  }

  // This instance's deploy, or in a fleet the fleet's last when it is newer
  // (src/admin/page.rs's `shown_deploy`): [deploy, the fleet's record or null].
  function shownDeploy(st) {
    const f = (st.cluster && st.cluster.deploy) || null;
    const d = st.deploy;
    if (d && (!f || f.status.started_at <= d.started_at)) return [d, null];
    return f ? [f.status, f] : [null, null];
  }

  function renderDeploy(st) {
    const root = document.getElementById('deploy');
    const [d, fleet] = shownDeploy(st);
    if (!d) {
      root.replaceChildren(h('p', { class: 'none' }, 'No deploy since the proxy started.'));
      return;
    }
    const by = fleet
      ? [' · by ', h('b', { class: 'by' }, fleet.by),
        ...(fleet.orphaned ? [' ', h('span', { class: 'badge orphaned' }, 'orphaned')] : [])]
      : [];
    const head = h('p', { class: 'deploy-head', 'data-phase': d.phase },
      'deploy ', h('b', {}, d.to), ' from ', h('b', {}, d.from || '(none)'),
      ` · started ${clock(d.started_at)}`, ...by, ' · ',
      h('span', { class: `badge phase-${d.phase}` }, d.phase));
    const items = phases(d, st).map((p) => {
      const li = h('li', { class: `phase ${p.state}`, 'data-phase': p.name, 'data-state': p.state },
        h('span', { class: 'label' }, p.name), ' ', h('span', { class: 'detail' }, p.detail));
      if (p.meter) li.append(' ', h('meter', { min: 0, max: p.meter[1], value: p.meter[0] }));
      if (p.steps.length) {
        li.append(h('ul', { class: 'steps' }, ...p.steps.map(([ok, t]) => h('li', { class: ok ? 'ok' : 'fail' }, t))));
      }
      return li;
    });
    root.replaceChildren(head, h('ol', { class: 'phases' }, ...items));
  }

  // ---- events -------------------------------------------------------------

  const str = (v) => (typeof v === 'string' ? v : '');
  const num = (v) => (typeof v === 'number' ? v : 0);

  // One line for an event, as src/admin/page.rs's `summary` writes it.
  function summary(v) {
    const slot = str(v.slot);
    switch (v.event) {
      case 'weights_set':
        return `weights ${(v.slots || []).map((x) => `${x.name}=${x.weight}`).join(' ')}`;
      case 'flipped': {
        let t = `${v.from || '(none)'} → ${str(v.to)}`;
        if ((v.draining || []).length) t += `; draining ${v.draining.join(', ')}`;
        return t;
      }
      case 'drain_started': return `${slot} draining (generation ${num(v.generation)})`;
      case 'slot_drained': return `${slot} drained`;
      case 'drain_ended': {
        let t = `${slot} drain ended after ${dur(num(v.drained_after_ms))}`;
        if (num(v.forced) > 0) t += `, ${v.forced} forced`;
        return t;
      }
      case 'retired': return `${slot} retired`;
      case 'standby': return `${slot} on standby (generation ${num(v.generation)})`;
      case 'slot_added': return `${slot} added (${str(v.state)})`;
      case 'slot_removed': return `${slot} removed`;
      case 'slot_readdressed': return `${slot} has a new upstream`;
      case 'probe_done':
        return v.ok === true ? `probe of ${slot} passed in ${num(v.ms)} ms` : `probe of ${slot} failed: ${str(v.error)}`;
      case 'watch_ended': {
        const o = v.outcome || {};
        let what;
        if (o.result === 'passed') what = `passed (${num(o.probes)} probes)`;
        else if (o.result === 'rolled_back') what = `rolled back: ${str(o.reason)}`;
        else what = `${str(o.result)}: ${str(o.reason)}`;
        return `watch of ${slot} ${what}`;
      }
      case 'rolled_back': return `rolled back ${v.from || '(none)'} → ${str(v.to)}: ${str(v.reason)}`;
      case 'state_not_saved': return `state NOT saved: ${str(v.error)}`;
      case 'reloaded':
        return (v.changed || []).length ? `config reloaded: ${v.changed.join(', ')}` : 'config reloaded, nothing changed';
      case 'deploy_started': return `deploy of ${str(v.to)} started (from ${v.from || '(none)'})`;
      case 'deploy_ended':
        return v.ok === true ? `deploy of ${str(v.to)} passed in ${dur(num(v.elapsed_ms))}` : `deploy of ${str(v.to)} failed: ${str(v.error)}`;
      case 'lagged': return `${num(v.missed)} events missed (the reader fell behind)`;
      default: return str(v.event);
    }
  }

  const kept = (name) => name !== 'progress' && name !== 'state_saved';

  function renderEvents() {
    const items = model.recent.slice().reverse().map((v) =>
      h('li', { 'data-event': str(v.event) },
        h('time', {}, clock(num(v.at))), ' ',
        h('span', { class: 'ev' }, str(v.event)), ' ',
        h('span', { class: 'text' }, summary(v))));
    if (!items.length) items.push(h('li', { class: 'none' }, 'No events since the proxy started.'));
    document.getElementById('events').replaceChildren(...items);
  }

  function remember(v) {
    model.recent.push(v);
    if (model.recent.length > KEEP) model.recent.shift();
    renderEvents();
  }

  // ---- the feed -----------------------------------------------------------

  function render() {
    const st = model.status;
    if (!st) return;
    renderSlots(st);
    renderFleet(st);
    renderMigration(st);
    renderAcme(st);
    renderDrains(st);
    renderDeploy(st);
  }

  // Drain progress between two status refreshes: the count as the drain saw it.
  function progress(v) {
    const st = model.status;
    if (!st || v.phase !== 'drain') return;
    const d = (st.drains || []).find((x) => x.slot === v.slot);
    const x = st.slots.find((y) => y.name === v.slot);
    if (!d || !x) return;
    d.elapsed_ms = v.elapsed_ms;
    d.deadline_ms = v.deadline_ms;
    x.live_streams = v.live_streams;
    x.inflight = v.inflight;
    render();
  }

  const conn = document.getElementById('conn');
  function connection(state, text) {
    conn.dataset.conn = state;
    conn.textContent = text;
  }

  if (typeof EventSource !== 'function') return; // the static page, with its refresh
  connection('connecting', 'connecting');
  const feed = new EventSource('/events');
  feed.addEventListener('open', () => connection('live', 'live'));
  feed.addEventListener('error', () => {
    connection(feed.readyState === EventSource.CLOSED ? 'lost' : 'connecting',
      feed.readyState === EventSource.CLOSED ? 'feed closed; reload the page' : 'reconnecting');
  });
  feed.addEventListener('status', (e) => {
    model.status = JSON.parse(e.data);
    render();
  });
  feed.addEventListener('recent', (e) => {
    model.recent = JSON.parse(e.data).slice(-KEEP);
    renderEvents();
  });
  feed.addEventListener('lagged', (e) => remember(JSON.parse(e.data)));
  for (const name of (document.body.dataset.events || '').split(' ')) {
    if (!name) continue;
    feed.addEventListener(name, (e) => {
      const v = JSON.parse(e.data);
      if (name === 'progress') progress(v);
      if (kept(name)) remember(v);
    });
  }
})();
