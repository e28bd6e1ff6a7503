import { StrictMode } from "react";
import { createRoot } from "react-dom/client";
import { App } from "./App";
import { OperatorApp } from "./OperatorApp";
import "./styles.css";

const root = document.getElementById("root");
if (root === null) throw new Error("index.html has no #root");
createRoot(root).render(
  <StrictMode>
    {window.location.pathname.startsWith("/operator") ? <OperatorApp /> : <App />}
  </StrictMode>,
);
