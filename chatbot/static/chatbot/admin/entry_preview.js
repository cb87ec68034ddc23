// The entry page's "preview as the customer sees it": each answer field rendered by the chat
// widget's own Markdown (markdown.js, loaded before this file), updated as the editor types.
(function () {
  "use strict";
  const parts = window[Symbol.for("supportchat.parts")] || {};
  if (!parts.markdown) return;
  const question = document.getElementById("id_question");
  const questionBubbles = document.querySelectorAll("[data-preview-question]");
  const previews = document.querySelectorAll("[data-preview-of]");

  function renderQuestion() {
    questionBubbles.forEach((bubble) => {
      bubble.textContent = (question && question.value.trim()) || "(the question)";
    });
  }

  function renderAnswer(preview) {
    const field = document.getElementById(preview.dataset.previewOf);
    const box = preview.closest("#translated-preview-box");
    if (!field) {
      if (box) box.hidden = true;
      return;
    }
    const text = field.value.trim();
    if (box) box.hidden = !text;
    preview.replaceChildren(parts.markdown.render(text || "(no answer yet)"));
  }

  if (question) question.addEventListener("input", renderQuestion);
  previews.forEach((preview) => {
    const field = document.getElementById(preview.dataset.previewOf);
    if (field) field.addEventListener("input", () => renderAnswer(preview));
    renderAnswer(preview);
  });
  renderQuestion();
})();
