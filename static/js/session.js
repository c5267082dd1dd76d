// The "Sign out" control. Shown only when the page lives on its session cookie (signed in
// once with ?token=): the cookie is HttpOnly, so the page asks the dashboard how it was let in
// ("session", relative, so any mount prefix works). Signing out ends the session on the server
// and clears the cookie; the page then reloads, and the dashboard asks for the token again.

const button = document.getElementById("sign-out");

/** How this page was let in: {by: "cookie" | "bearer", ...}, or null (no token is set). */
async function session() {
  try {
    const response = await fetch("session", {
      credentials: "same-origin",
      cache: "no-store",
      headers: { Accept: "application/json" },
    });
    if (!response.ok) return null;
    return await response.json();
  } catch {
    return null;
  }
}

async function signOut() {
  button.disabled = true;
  button.textContent = "Signing out…";
  try {
    const response = await fetch("session/sign-out", {
      method: "POST",
      credentials: "same-origin",
      cache: "no-store",
    });
    if (!response.ok) throw new Error(`sign-out answered ${response.status}`);
    button.textContent = "Signed out";
    window.__dashboardSession = { signedOut: true };
    window.location.replace("./");
  } catch (error) {
    button.disabled = false;
    button.textContent = "Sign out";
    button.title = `Sign-out failed: ${error.message}`;
  }
}

if (button) {
  session().then((answer) => {
    window.__dashboardSession = { by: answer ? answer.by : null };
    if (answer && answer.by === "cookie") {
      button.hidden = false;
      button.addEventListener("click", signOut);
    }
  });
}
