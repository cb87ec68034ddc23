// The widget's CSS, applied inside its shadow root: the host page's CSS cannot reach it and it
// reaches nothing outside. Kept as a string so the widget can adopt it as a constructable
// stylesheet, which a host CSP's style-src does not block (a <style> element it would).
// Colours come from custom properties the widget sets from the site's primary colour, after
// checking they keep WCAG AA contrast.
(function () {
  "use strict";
  const parts = (window[Symbol.for("supportchat.parts")] ||= {});
  parts.css = `
:host { all: initial; }
* { box-sizing: border-box; }
/* Rules of the host page that match the host element still reach it, and inherited ones (letter
   spacing, line height, text alignment…) would flow in: reset them all. */
.root { all: initial; display: block; font: 15px/1.45 system-ui, -apple-system, "Segoe UI", "PingFang SC", "Microsoft YaHei", sans-serif;
  color: #1f2328; --radius: 14px; }
button, input, textarea { font: inherit; color: inherit; }
button { cursor: pointer; }
:focus-visible { outline: 3px solid var(--sc-focus, #0550ae); outline-offset: 2px; }
.sr-only { position: absolute; width: 1px; height: 1px; padding: 0; margin: -1px; overflow: hidden;
  clip: rect(0 0 0 0); white-space: nowrap; border: 0; }
.launcher { position: fixed; right: 20px; bottom: 20px; z-index: 2147483646; width: 60px; height: 60px;
  border-radius: 50%; border: 0; background: var(--sc-primary); color: var(--sc-on-primary);
  box-shadow: 0 4px 14px rgba(0,0,0,.25); display: grid; place-items: center;
  transition: transform .15s ease; }
.launcher:hover { transform: scale(1.06); }
.launcher svg { width: 28px; height: 28px; fill: currentColor; }
.panel { position: fixed; right: 20px; bottom: 92px; z-index: 2147483647; width: 380px;
  height: min(620px, calc(100vh - 120px)); display: flex; flex-direction: column; background: #fff;
  border-radius: var(--radius); box-shadow: 0 8px 30px rgba(0,0,0,.25); overflow: hidden;
  animation: sc-in .18s ease-out; }
.panel[hidden] { display: none; }
@keyframes sc-in { from { opacity: 0; transform: translateY(12px); } to { opacity: 1; transform: none; } }
.head { display: flex; align-items: center; gap: .5rem; padding: .75rem .9rem; background: var(--sc-primary);
  color: var(--sc-on-primary); }
.head h2 { font-size: 1rem; margin: 0; flex: 1; }
.status { display: block; font-size: .8rem; font-weight: 400; }
.head button { background: transparent; border: 1px solid currentColor; color: inherit; border-radius: 8px;
  padding: .25rem .55rem; font-size: .85rem; }
.head .x { border: 0; font-size: 1.4rem; line-height: 1; padding: .1rem .45rem; }
.log { flex: 1; overflow-y: auto; padding: 1rem; display: flex; flex-direction: column; gap: .6rem;
  background: #f6f8fa; }
.msg { max-width: 88%; padding: .5rem .75rem; border-radius: 12px; overflow-wrap: anywhere; }
.msg.customer { align-self: flex-end; background: var(--sc-primary); color: var(--sc-on-primary);
  border-bottom-right-radius: 4px; white-space: pre-wrap; }
.msg.bot { align-self: flex-start; background: #fff; border: 1px solid #d0d7de; border-bottom-left-radius: 4px; }
.msg.agent { align-self: flex-start; background: #dafbe1; border: 1px solid #4ac26b; border-bottom-left-radius: 4px; }
.msg.agent .from { display: block; font-size: .75rem; font-weight: 600; color: #116329; margin-bottom: .15rem; }
.agent-typing .who { font-size: .75rem; color: #57606a; margin-right: .3rem; }
.leave-email label { display: block; margin-bottom: .3rem; } .leave-email input { width: 100%; box-sizing: border-box; }
.msg.pending { opacity: .75; }
.msg.notice { align-self: center; background: #fff8c5; color: #4d2d00; font-size: .85rem; text-align: center; }
.msg.error { align-self: center; background: #ffebe9; color: #82071e; font-size: .85rem; }
.body p { margin: 0 0 .5rem; } .body p:last-child { margin-bottom: 0; }
.body ul, .body ol { margin: .25rem 0 .5rem; padding-left: 1.3rem; }
.body a { color: var(--sc-primary-text); }
.body code { background: #eff1f3; border-radius: 4px; padding: 0 .25rem; font-size: .9em; }
.meta { display: block; font-size: .75rem; color: #57606a; margin-top: .3rem; }
.queued { display: block; font-size: .75rem; margin-top: .2rem; }
.refs { font-size: .8rem; color: #57606a; margin-top: .3rem; }
.refs a, .refs .ref { color: var(--sc-primary-text); }
.choices { display: flex; flex-direction: column; gap: .35rem; margin-top: .5rem; }
.choices button, .starters button { text-align: left; border: 1px solid var(--sc-primary-text);
  color: var(--sc-primary-text); background: #fff; border-radius: 10px; padding: .4rem .65rem; }
.choices button:disabled { opacity: .6; cursor: default; }
.starters { display: flex; flex-wrap: wrap; gap: .4rem; }
.feedback { display: flex; align-items: center; gap: .3rem; margin-top: .35rem; }
.feedback > button { background: transparent; border: 1px solid #d0d7de; border-radius: 8px; padding: .05rem .45rem;
  color: #57606a; }
.feedback > button[aria-pressed="true"] { border-color: var(--sc-primary-text); color: var(--sc-primary-text);
  background: #eef4ff; }
.feedback > button svg { width: 14px; height: 14px; fill: currentColor; vertical-align: middle; }
.feedback .thanks { font-size: .75rem; color: #57606a; }
.reason, .rating { display: flex; flex-direction: column; gap: .35rem; margin-top: .4rem; }
.reason label, .rating label, .rating legend { font-size: .85rem; }
textarea { border: 1px solid #8c959f; border-radius: 8px; padding: .35rem .5rem; resize: vertical; min-height: 2.4rem; }
.primary { align-self: flex-start; border: 0; border-radius: 8px; padding: .4rem .8rem; background: var(--sc-primary);
  color: var(--sc-on-primary); }
.secondary { align-self: flex-start; border: 1px solid #8c959f; border-radius: 8px; padding: .4rem .8rem;
  background: #fff; }
.rating fieldset { border: 0; margin: 0; padding: 0; }
.stars { display: flex; gap: .3rem; }
.stars label { position: relative; }
.stars input { position: absolute; opacity: 0; width: 1px; height: 1px; }
.stars span { display: inline-grid; place-items: center; width: 2.2rem; height: 2.2rem; border: 1px solid #8c959f;
  border-radius: 50%; background: #fff; }
.stars input:checked + span { background: var(--sc-primary); color: var(--sc-on-primary); border-color: var(--sc-primary); }
.stars input:focus-visible + span { outline: 3px solid var(--sc-focus, #0550ae); outline-offset: 2px; }
.row { display: flex; gap: .4rem; }
.typing { align-self: flex-start; display: flex; gap: 4px; padding: .7rem .8rem; background: #fff;
  border: 1px solid #d0d7de; border-radius: 12px; }
.typing i { width: 7px; height: 7px; border-radius: 50%; background: #57606a; animation: sc-dot 1.2s infinite ease-in-out; }
.typing i:nth-child(2) { animation-delay: .15s; } .typing i:nth-child(3) { animation-delay: .3s; }
@keyframes sc-dot { 0%, 80%, 100% { opacity: .3; transform: none; } 40% { opacity: 1; transform: translateY(-3px); } }
.composer { display: flex; gap: .5rem; padding: .65rem; border-top: 1px solid #d0d7de; background: #fff; }
.composer textarea { flex: 1; min-height: 2.5rem; max-height: 8rem; resize: none; }
.composer button { border: 0; border-radius: 8px; padding: 0 1rem; background: var(--sc-primary); color: var(--sc-on-primary); }
@media (max-width: 480px) {
  .panel { inset: 0; width: auto; height: auto; border-radius: 0; }
  .launcher { right: 14px; bottom: 14px; }
  .launcher[aria-expanded="true"] { display: none; }
}
@media (prefers-reduced-motion: reduce) {
  *, *::before, *::after { animation: none !important; transition: none !important; }
}
`;
})();
