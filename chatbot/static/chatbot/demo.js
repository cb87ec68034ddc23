// The demo shop's own script: what any host site may do with the widget's API. Its buttons open
// the chat and ask through window.SupportChat (the widget loads asynchronously: until it is ready
// the buttons wait for its "supportchat:ready" event).
(function () {
  "use strict";
  function withChat(action) {
    if (window.SupportChat && window.SupportChat.ready) return action(window.SupportChat);
    window.addEventListener("supportchat:ready", function () { action(window.SupportChat); }, { once: true });
  }
  document.querySelectorAll("[data-ask]").forEach(function (button) {
    button.addEventListener("click", function () {
      withChat(function (chat) {
        chat.open();
        chat.send(button.textContent);
      });
    });
  });
  document.getElementById("help").addEventListener("click", function () {
    withChat(function (chat) { chat.open(); });
  });
})();
