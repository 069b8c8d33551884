// faec_rec pages: every change goes through the REST API with the session's CSRF token.
// Text from the server is put in the page with textContent only (never innerHTML).
(function () {
  "use strict";
  const csrf = (document.querySelector('meta[name="csrf-token"]') || {}).content || "";
  const $ = (sel, root) => (root || document).querySelector(sel);

  function toast(text, isError) {
    const t = $("#toast");
    if (!t) return;
    t.textContent = text;
    t.className = "show" + (isError ? " err" : "");
    clearTimeout(toast.timer);
    toast.timer = setTimeout(() => { t.className = ""; }, 3500);
  }

  async function api(method, url, body) {
    const opts = { method, headers: { "X-CSRF-Token": csrf, "Accept": "application/json" }, credentials: "same-origin" };
    if (body instanceof FormData) opts.body = body;
    else if (body !== undefined) { opts.body = JSON.stringify(body); opts.headers["Content-Type"] = "application/json"; }
    const r = await fetch(url, opts);
    let data = null;
    try { data = await r.json(); } catch (e) { /* not JSON */ }
    if (!r.ok) throw new Error((data && data.error && data.error.message) || ("HTTP " + r.status));
    return data;
  }

  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }

  function when(ts) {
    if (!ts) return "";
    const d = new Date(ts * 1000);
    return d.toDateString() === new Date().toDateString() ? d.toLocaleTimeString() : d.toLocaleString();
  }

  // ---- logout
  const logout = $("#logout");
  if (logout) logout.addEventListener("click", async () => {
    await fetch("/logout", { method: "POST", headers: { "X-CSRF-Token": csrf }, credentials: "same-origin" });
    location.href = "/login";
  });

  // ---- live: camera tiles and arrivals
  const arrivals = $("#arrivals");
  if (arrivals) {
    const state = $("#live-state");
    const tileLast = {};
    document.querySelectorAll(".tile[data-camera]").forEach((t) => {
      const text = t.querySelector('[data-field="last"]').textContent;
      if (text.startsWith("last: ")) tileLast[t.dataset.camera] = text.slice(6).split(", ");
    });
    function addArrival(ev) {
      const none = $("#no-arrivals");
      if (none) none.remove();
      if (arrivals.querySelector('[data-id="' + CSS.escape(ev.id) + '"]')) return;
      const li = el("li", "arrival fresh " + (ev.decision === "known" ? "known" : "unknown"));
      li.dataset.id = ev.id;
      const img = el("img", "crop");
      img.alt = "";
      img.src = "/api/v1/events/" + encodeURIComponent(ev.id) + "/crop";
      img.addEventListener("error", () => img.replaceWith(el("div", "crop placeholder", "?")));
      const div = el("div");
      const who = el("strong", "", ev.person || (ev.visitor ? "" : "Stranger"));
      if (!ev.person && ev.visitor) {  // a recurring stranger: its visitor, reviewed on the Review page
        const a = el("a", "visitor-link", "Visitor " + ev.visitor);
        a.href = "/review?visitor=" + encodeURIComponent(ev.visitor);
        a.title = ev.visitor_person ? "named since: " + ev.visitor_person : "review this visitor";
        who.append(a);
      }
      div.append(who);
      // -1 is "nobody to compare with" (an empty gallery), not a score worth showing
      const score = ev.score == null || ev.score <= -1 ? "" : " · " + Number(ev.score).toFixed(3);
      div.append(el("span", "small muted", ev.camera + " · " + when(ev.captured_at || ev.processed_at) + score));
      li.append(img, div);
      arrivals.prepend(li);
      while (arrivals.children.length > 60) arrivals.lastElementChild.remove();
      (tileLast[ev.camera] = tileLast[ev.camera] || []).unshift(ev.person || ev.visitor || "stranger");
      tileLast[ev.camera] = tileLast[ev.camera].slice(0, 4);
      const tile = document.querySelector('.tile[data-camera="' + CSS.escape(ev.camera) + '"] [data-field="last"]');
      if (tile) tile.textContent = "last: " + tileLast[ev.camera].join(", ");
    }
    const source = new EventSource(arrivals.dataset.stream);
    source.addEventListener("open", () => { state.textContent = "live"; state.className = "live-dot on"; });
    source.addEventListener("error", () => { state.textContent = "reconnecting…"; state.className = "live-dot"; });
    source.addEventListener("arrived", (m) => addArrival(JSON.parse(m.data)));

    const tiles = $("#cameras");
    const isAdmin = tiles.dataset.admin === "1";
    function newTile(cam) {
      const tile = el("article", "tile card");
      tile.dataset.camera = cam.camera;
      const h = el("header");
      h.append(el("strong", "", cam.camera), " ");
      const b = el("span", "badge"); b.dataset.field = "status"; h.append(b);
      const src = el("p", "small muted source"); src.dataset.field = "source";
      const dl = el("dl");
      for (const [f, label] of [["processed_fps", "frames/s"], ["processed", "processed"], ["dropped", "dropped"], ["faces", "faces"]]) {
        const d = el("div"); d.append(el("dt", "", label)); const dd = el("dd"); dd.dataset.field = f; d.append(dd); dl.append(d);
      }
      const last = el("p", "small muted last-faces", tileLast[cam.camera] ? "last: " + tileLast[cam.camera].join(", ") : "no faces yet");
      last.dataset.field = "last";
      tile.append(h, src, dl, last);
      return tile;
    }
    async function refreshCameras() {
      try {
        const data = await api("GET", "/api/v1/cameras");
        const listed = new Set(data.cameras.map((c) => c.camera));
        tiles.querySelectorAll(".tile[data-camera]").forEach((t) => { if (!listed.has(t.dataset.camera)) t.remove(); });
        for (const cam of data.cameras) {
          let tile = tiles.querySelector('.tile[data-camera="' + CSS.escape(cam.camera) + '"]');
          if (!tile) {
            const none = $("#no-cameras");
            if (none) none.remove();
            tile = newTile(cam);
            tiles.append(tile);
          }
          for (const f of ["processed", "dropped", "faces"]) tile.querySelector('[data-field="' + f + '"]').textContent = cam[f];
          tile.querySelector('[data-field="processed_fps"]').textContent = cam.processed_fps == null ? "–" : cam.processed_fps;
          const src = tile.querySelector('[data-field="source"]');
          src.textContent = cam.source || ""; src.title = cam.source || "";
          const badge = tile.querySelector('[data-field="status"]');
          badge.textContent = cam.status || "unknown";
          badge.className = "badge status-" + (cam.status || "unknown");
          if (isAdmin && cam.registered && !tile.querySelector(".remove-camera")) {
            tile.append(el("button", "danger small-btn remove-camera", "Remove"));
            tile.lastElementChild.type = "button";
          }
        }
        if (!data.cameras.length && !$("#no-cameras")) {
          tiles.append(el("p", "empty", "No camera yet." + (isAdmin ? " Add one below." : "")));
          tiles.lastElementChild.id = "no-cameras";
        }
      } catch (e) { /* next round */ }
    }
    // Remove asks once more on the button itself: a slip of the finger must not stop a camera.
    tiles.addEventListener("click", async (e) => {
      const btn = e.target.closest(".remove-camera");
      if (!btn) return;
      const id = btn.closest(".tile").dataset.camera;
      if (!btn.classList.contains("armed")) {
        btn.classList.add("armed"); btn.textContent = "Remove " + id + "?";
        setTimeout(() => { btn.classList.remove("armed"); btn.textContent = "Remove"; }, 4000);
        return;
      }
      btn.disabled = true;
      try {
        await api("DELETE", "/api/v1/cameras/" + encodeURIComponent(id));
        btn.closest(".tile").remove();
        toast("Camera " + id + " removed");
        refreshCameras();
      } catch (err) { btn.disabled = false; toast(err.message, true); }
    });
    const addForm = $("#add-camera-form");
    if (addForm) addForm.addEventListener("submit", async (e) => {
      e.preventDefault();
      const body = { camera: $("#camera-id").value.trim(), source: $("#camera-source").value.trim(), loop: $("#camera-loop").checked };
      if ($("#camera-fps").value) body.fps = Number($("#camera-fps").value);
      const btn = addForm.querySelector("button[type=submit]");
      btn.disabled = true;
      try {
        const rec = await api("POST", "/api/v1/cameras", body);
        addForm.reset();
        toast("Camera " + rec.camera + " added: " + rec.source);
        await refreshCameras();
      } catch (err) { toast(err.message, true); }
      btn.disabled = false;
    });
    refreshCameras();
    setInterval(refreshCameras, 3000);
  }

  // ---- drop areas: a hidden file input inside a label; say what was picked
  document.querySelectorAll("label.drop").forEach((drop) => {
    const input = drop.querySelector("input[type=file]"), picked = drop.querySelector(".picked");
    const show = () => {
      const names = Array.from(input.files).map((f) => f.name);
      picked.textContent = names.length ? (names.length === 1 ? names[0] : names.length + " photos: " + names.slice(0, 3).join(", ") + (names.length > 3 ? "…" : "")) : picked.dataset.empty;
    };
    input.addEventListener("change", show);
    ["dragenter", "dragover"].forEach((n) => drop.addEventListener(n, (e) => { e.preventDefault(); drop.classList.add("over"); }));
    ["dragleave", "drop"].forEach((n) => drop.addEventListener(n, () => drop.classList.remove("over")));
    drop.addEventListener("drop", (e) => { e.preventDefault(); input.files = e.dataTransfer.files; show(); });
  });

  function personCard(p) {
    const a = el("a", "person card");
    a.href = "/people/" + encodeURIComponent(p.id);
    if (p.faces && p.faces.length) { const img = el("img"); img.src = p.faces[0]; img.alt = ""; a.append(img); }
    else a.append(el("div", "noface", "?"));
    a.append(el("strong", "", p.name), el("span", "small muted", p.templates + (p.templates === 1 ? " photo" : " photos")));
    a.dataset.person = p.id;
    return a;
  }

  // ---- people: enrol by dropping photos
  const enrolForm = $("#enrol-form");
  if (enrolForm) {
    const files = $("#enrol-files");
    enrolForm.addEventListener("submit", async (e) => {
      e.preventDefault();
      const list = $("#verdicts");
      list.replaceChildren(el("li", "muted", "Enrolling " + files.files.length + " photo(s)…"));
      const button = enrolForm.querySelector("button");
      button.disabled = true;
      const thumbs = {};
      for (const f of files.files) thumbs[f.name] = URL.createObjectURL(f);
      try {
        const report = await api("POST", "/api/v1/people", new FormData(enrolForm));
        list.replaceChildren();
        for (const img of report.images) {
          const li = el("li");
          if (thumbs[img.name]) { const t = el("img"); t.src = thumbs[img.name]; t.alt = ""; li.append(t); }
          const d = el("div");
          d.append(el("strong", img.accepted ? "ok" : "bad", img.accepted ? "✓ accepted" : "✗ " + img.reason.replace(/_/g, " ")));
          d.append(el("div", "small muted", img.name + (img.detail ? " — " + img.detail : "")));
          li.append(d);
          list.append(li);
        }
        const n = report.images.filter((i) => i.accepted).length;
        toast(n ? (report.name + ": " + n + " photo(s) enrolled") : "No photo was accepted", !n);
        if (n) {
          const a = el("a", "", "Open " + report.name + " →");
          a.href = "/people/" + encodeURIComponent(report.person_id);
          const li = el("li"); li.append(a); list.append(li);
          const person = await api("GET", "/api/v1/people/" + encodeURIComponent(report.person_id));
          const grid = $("#people-grid"), old = grid.querySelector('[data-person="' + CSS.escape(person.id) + '"]');
          const none = $("#no-people");
          if (none) none.remove();
          if (old) old.replaceWith(personCard(person)); else grid.prepend(personCard(person));
          $("#people-count").textContent = grid.querySelectorAll("a.person").length;
          enrolForm.reset();
          enrolForm.querySelectorAll(".picked").forEach((p) => { p.textContent = p.dataset.empty; });
        }
      } catch (err) {
        list.replaceChildren(el("li", "bad", err.message));
        toast(err.message, true);
      } finally { button.disabled = false; }
    });
  }

  // ---- identify a photo
  const idForm = $("#identify-form");
  if (idForm) idForm.addEventListener("submit", async (e) => {
    e.preventDefault();
    const out = $("#identify-result");
    const file = $("#identify-file").files[0];
    if (!file) return;
    out.replaceChildren(el("p", "muted", "Looking…"));
    try {
      const result = await api("POST", "/api/v1/identify", new FormData(idForm));
      const img = new Image();
      img.src = URL.createObjectURL(file);
      await img.decode();
      const canvas = el("canvas");
      canvas.width = img.naturalWidth; canvas.height = img.naturalHeight;
      const g = canvas.getContext("2d");
      g.drawImage(img, 0, 0);
      g.lineWidth = Math.max(2, img.naturalWidth / 200);
      g.font = Math.max(14, img.naturalWidth / 30) + "px system-ui";
      const ul = el("ul");
      for (const f of result.faces) {
        const [x1, y1, x2, y2] = f.box;
        g.strokeStyle = f.person ? "#1a7f37" : "#b26a00";
        g.strokeRect(x1, y1, x2 - x1, y2 - y1);
        g.fillStyle = g.strokeStyle;
        g.fillText(f.person || "stranger", x1, Math.max(16, y1 - 6));
        ul.append(el("li", "", (f.person || "stranger") + (f.score == null ? "" : " (" + Number(f.score).toFixed(3) + ")")));
      }
      out.replaceChildren(canvas, result.faces.length ? ul : el("p", "muted", "No face found in this photo."));
    } catch (err) {
      out.replaceChildren(el("p", "bad", err.message));
    }
  });

  // ---- person: rename, forget
  const rename = $("#rename-form");
  if (rename) rename.addEventListener("submit", async (e) => {
    e.preventDefault();
    try {
      const p = await api("PATCH", "/api/v1/people/" + encodeURIComponent(rename.dataset.person), { name: $("#rename-name").value });
      $("#person-name").textContent = p.name;
      document.querySelectorAll(".pname").forEach((n) => { n.textContent = p.name; });
      document.title = p.name + " · faec_rec";
      toast("Renamed to " + p.name);
    } catch (err) { toast(err.message, true); }
  });
  const forget = $("#forget");
  if (forget) {
    const dialog = $("#forget-dialog");
    forget.addEventListener("click", () => dialog.showModal());
    $("#forget-cancel").addEventListener("click", () => dialog.close());
    $("#forget-confirm").addEventListener("click", async () => {
      try {
        await api("DELETE", "/api/v1/people/" + encodeURIComponent(forget.dataset.person));
        location.href = "/people";
      } catch (err) { dialog.close(); toast(err.message, true); }
    });
  }

  // ---- server-rendered crops that are gone: a placeholder, not a broken image
  document.querySelectorAll("img.crop").forEach((img) => {
    const swap = () => img.replaceWith(el("div", "crop placeholder", "?"));
    if (img.complete && img.naturalWidth === 0) swap(); else img.addEventListener("error", swap);
  });

  // ---- sightings timeline dots (positioned here: the CSP allows no inline styles)
  document.querySelectorAll(".tl-dot").forEach((d) => { d.style.left = d.dataset.left + "%"; });

  // ---- models
  document.querySelectorAll("button.promote").forEach((b) => b.addEventListener("click", async () => {
    try { await api("POST", "/api/v1/models/" + encodeURIComponent(b.dataset.version) + "/promote", { reason: "promoted on the Models page" }); location.reload(); }
    catch (err) { toast(err.message, true); }
  }));
  const rollback = $("#rollback");
  if (rollback) rollback.addEventListener("click", async () => {
    try { await api("POST", "/api/v1/models/rollback", { reason: "rolled back on the Models page" }); location.reload(); }
    catch (err) { toast(err.message, true); }
  });
  // Training progress: the worker writes it to Redis, GET /api/v1/models/training reads it;
  // polled once a second while a run is queued or running.
  const progressBox = $("#train-progress");
  const train = $("#train");
  const ACTIVE = ["queued", "running"];
  const STAGE_NAMES = { gallery: "reading the gallery", "reference features": "reference features",
    train: "training the head", evaluate: "judging it against the model in service" };
  function showProgress(p) {
    progressBox.hidden = p.state === "idle";
    progressBox.dataset.state = p.state;
    const title = $("#train-title"), detail = $("#train-detail"), bar = $("#train-bar"), result = $("#train-result");
    bar.value = p.percent || 0;
    const parts = [];
    if (p.state === "queued") {
      title.textContent = "Training queued";
      parts.push("waiting for a worker on queue 'train'");
    } else if (p.state === "running") {
      title.textContent = "Training";
      parts.push(STAGE_NAMES[p.stage] || p.stage || "starting");
      if (p.stage === "train" && p.epochs) parts.push("epoch " + p.epoch + " of " + p.epochs);
      else if (p.total > 1) parts.push(p.done + " of " + p.total);
      if (p.loss != null) parts.push("loss " + Number(p.loss).toFixed(4));
      parts.push(Math.round(p.percent || 0) + "%");
    } else {
      title.textContent = { done: "Last training", skipped: "Last training skipped", failed: "Last training failed" }[p.state] || p.state;
      if (p.finished_at) parts.push(when(p.finished_at));
      if (p.epochs) parts.push(p.epochs + " epochs");
      if (p.loss != null) parts.push("final loss " + Number(p.loss).toFixed(4));
    }
    detail.textContent = parts.join(" · ");
    const r = p.result || {};
    result.textContent = p.state === "failed" ? (p.error || "") :
      p.state === "done" ? (r.version + " " + r.status + (r.reason ? ": " + r.reason : "")) :
      p.state === "skipped" ? (r.reason || "") : "";
    result.className = "small " + (p.state === "failed" ? "bad" : r.status === "promoted" ? "ok" : "muted");
  }
  let polling = null;
  function follow() {
    if (polling) return;
    polling = setInterval(async () => {
      let p;
      try { p = await api("GET", "/api/v1/models/training"); } catch (e) { return; }
      showProgress(p);
      if (!ACTIVE.includes(p.state)) {
        clearInterval(polling); polling = null;
        if (p.result && p.result.version) setTimeout(() => location.reload(), 1500);  // the new version's row
        if (train) train.disabled = false;
      }
    }, 1000);
  }
  if (progressBox) {
    const p = JSON.parse(progressBox.dataset.progress);
    showProgress(p);
    if (ACTIVE.includes(p.state)) { if (train) train.disabled = true; follow(); }
  }
  if (train) train.addEventListener("click", async () => {
    train.disabled = true;
    try {
      await api("POST", "/api/v1/models/train");
      showProgress({ state: "queued", percent: 0 });
      follow();
    } catch (err) { train.disabled = false; toast(err.message, true); }
  });
})();
// ---- review: visitors (name, merge, split, forget) and feedback on recent recognitions
(function () {
  "use strict";
  const csrf = (document.querySelector('meta[name="csrf-token"]') || {}).content || "";
  async function api(method, url, body) {
    const opts = { method, credentials: "same-origin", headers: { "X-CSRF-Token": csrf, "Accept": "application/json" } };
    if (body !== undefined) { opts.body = JSON.stringify(body); opts.headers["Content-Type"] = "application/json"; }
    const r = await fetch(url, opts);
    let data = null;
    try { data = await r.json(); } catch (e) { /* not JSON */ }
    if (!r.ok) throw new Error((data && data.error && data.error.message) || ("HTTP " + r.status));
    return data;
  }
  function toast(text, isError) {
    const t = document.getElementById("toast");
    if (!t) return;
    t.textContent = text;
    t.className = "show" + (isError ? " err" : "");
    setTimeout(() => { t.className = ""; }, 3500);
  }
  const sort = document.getElementById("sort");
  if (sort) sort.addEventListener("change", () => sort.form.submit());

  const picks = () => Array.from(document.querySelectorAll(".visitor .pick:checked")).map((c) => c.value);
  function updateBulk() {
    const n = picks().length;
    const count = document.getElementById("bulk-count");
    if (!count) return;
    count.textContent = n ? n + " visitor" + (n === 1 ? "" : "s") + " selected" : "Tick visitors to merge or forget them together.";
    const merge = document.getElementById("merge-selected"), forget = document.getElementById("forget-selected");
    if (merge) merge.disabled = n < 2;
    if (forget) forget.disabled = n < 1;
  }
  document.querySelectorAll(".visitor .pick").forEach((c) => c.addEventListener("change", () => {
    c.closest(".visitor").classList.toggle("picked", c.checked);
    updateBulk();
  }));
  const merge = document.getElementById("merge-selected");
  if (merge) merge.addEventListener("click", async () => {
    try { const r = await api("POST", "/api/v1/visitors/merge", { visitors: picks() }); toast("Merged into " + r.visitor); setTimeout(() => location.reload(), 800); }
    catch (err) { toast(err.message, true); }
  });
  const forgetSel = document.getElementById("forget-selected");
  if (forgetSel) forgetSel.addEventListener("click", async () => {
    const ids = picks();
    if (!window.confirm("Forget " + ids.length + " visitor(s) and every face of theirs? This cannot be undone.")) return;
    try { for (const id of ids) await api("DELETE", "/api/v1/visitors/" + encodeURIComponent(id)); location.reload(); }
    catch (err) { toast(err.message, true); }
  });

  document.querySelectorAll(".visitor").forEach((card) => {
    const id = card.dataset.visitor;
    const split = card.querySelector("button.split");
    card.querySelectorAll(".faces.pickable img").forEach((img) => img.addEventListener("click", () => {
      if (!split) return;
      img.classList.toggle("sel");
      const n = card.querySelectorAll("img.sel").length;
      split.disabled = n === 0;
      split.textContent = n ? "Split " + n + " face" + (n === 1 ? "" : "s") + " off" : "Split selected faces off";
    }));
    if (split) split.addEventListener("click", async () => {
      const faces = Array.from(card.querySelectorAll("img.sel")).map((i) => i.dataset.face);
      try { const r = await api("POST", "/api/v1/visitors/" + encodeURIComponent(id) + "/split", { faces }); toast("Split off as " + r.visitor); setTimeout(() => location.reload(), 800); }
      catch (err) { toast(err.message, true); }
    });
    const nameForm = card.querySelector("form.name-visitor");
    if (nameForm) nameForm.addEventListener("submit", async (e) => {
      e.preventDefault();
      const name = nameForm.elements.name.value;
      const button = nameForm.querySelector("button");
      button.disabled = true;
      try {
        let report;
        try { report = await api("POST", "/api/v1/visitors/" + encodeURIComponent(id) + "/name", { name }); }
        catch (err) {
          if (!/already enrolled/.test(err.message) || !window.confirm(err.message.split(":")[0] + ". Add these faces to them?")) throw err;
          report = await api("POST", "/api/v1/visitors/" + encodeURIComponent(id) + "/name", { name, into_existing: true });
        }
        const n = report.images.filter((i) => i.accepted).length;
        if (report.status !== "done") throw new Error("not enrolled: " + (report.detail || report.error || report.status));
        toast(report.name + ": " + n + " face(s) enrolled");
        card.replaceChildren();
        const p = document.createElement("p");
        const a = document.createElement("a");
        a.href = "/people/" + encodeURIComponent(report.person_id);
        a.textContent = report.name;
        p.append(id + " is now ", a, " (" + n + " faces enrolled).");
        card.append(p);
      } catch (err) { toast(err.message, true); }
      finally { button.disabled = false; }
    });
    const forget = card.querySelector("button.forget-visitor");
    if (forget) forget.addEventListener("click", async () => {
      if (!window.confirm("Forget " + id + " and every face of theirs? This cannot be undone.")) return;
      try { await api("DELETE", "/api/v1/visitors/" + encodeURIComponent(id)); card.remove(); toast("Forgot " + id); }
      catch (err) { toast(err.message, true); }
    });
  });

  document.querySelectorAll("button.feedback").forEach((b) => b.addEventListener("click", async () => {
    const body = { event_id: b.dataset.event };
    body[b.dataset.kind] = b.dataset.person;
    try {
      const r = await api("POST", "/api/v1/feedback", body);
      const li = b.closest("li");
      li.classList.add("done");
      li.querySelectorAll("button").forEach((x) => { x.disabled = true; });
      const note = document.createElement("span");
      note.className = "small " + (r.is_person ? "ok" : "bad");
      note.textContent = r.is_person ? "confirmed" : "corrected: not " + r.person + (r.visitor ? " → " + r.visitor : "");
      b.closest(".row-left").replaceWith(note);
      toast(r.is_person ? "Thanks: confirmed " + r.person : "Corrected: not " + r.person + (r.visitor ? " (now " + r.visitor + ")" : ""));
    } catch (err) { toast(err.message, true); }
  }));
})();
